"""What is on this machine: list, show, remove, and import a local GGUF into the store."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from localllm.errors import ModelFileError
from localllm.registry.details import gguf_facts, mlx_facts
from localllm.registry.diskspace import DISK_FULL_ERRNOS, check_disk, disk_full_error
from localllm.registry.entries import ModelDetails, ModelEntry
from localllm.registry.errors import InvalidModelNameError
from localllm.registry.lookup import find_manifests, pick_format, preferred_format
from localllm.registry.manifest import Manifest, ManifestFile
from localllm.registry.names import looks_like_path, parse_model_name
from localllm.registry.store import ContentStore


def entry_for(store: ContentStore, manifest: Manifest) -> ModelEntry:
    path = store.manifest_path(manifest.model_name, manifest.format)
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        modified = manifest.created
    digest = manifest.primary.sha256 if manifest.format == "gguf" else hashlib.sha256(manifest.to_json().encode()).hexdigest()
    return ModelEntry(
        name=manifest.full_name,
        path=store.model_path(manifest),
        size_bytes=manifest.size_bytes,
        quant=manifest.quant,
        format=manifest.format,
        modified=modified,
        digest=digest,
    )


def stored_digest(name: str, settings) -> str | None:
    """The digest `name` (tag `latest` when none is given) stands for in the store, or
    None when nothing is stored under it: lets a command say what it replaces."""
    model_name = parse_model_name(name)
    if model_name.tag is None:
        model_name = model_name.with_tag("latest")
    store = ContentStore(settings.models_dir)
    manifest = store.read_manifest(model_name, "gguf", damaged_ok=True)
    return entry_for(store, manifest).digest if manifest is not None else None


def list_models(settings) -> list[ModelEntry]:
    """Every pulled or imported model, newest first."""
    store = ContentStore(settings.models_dir)
    entries = [entry_for(store, m) for _, m in store.all_manifests()]
    return sorted(entries, key=lambda e: (-e.modified, e.name, e.format))


def _facts(store: ContentStore, manifest: Manifest):
    if manifest.format == "gguf":
        return gguf_facts([store.blob_path(f.sha256) for f in manifest.files])
    return mlx_facts(store.snapshot(manifest))


def list_models_described(settings) -> list[tuple[ModelEntry, object]]:
    """`list_models` with what each model's header says (`details.ModelFacts`, or None
    for a model whose files cannot be read): for Ollama's /api/tags details."""
    store = ContentStore(settings.models_dir)
    out = []
    for _, manifest in store.all_manifests():
        try:
            facts = _facts(store, manifest) if not store.missing_blobs(manifest) else None
        except (ModelFileError, OSError):
            facts = None
        out.append((entry_for(store, manifest), facts))
    return sorted(out, key=lambda pair: (-pair[0].modified, pair[0].name, pair[0].format))


def show_model(name: str, settings) -> ModelDetails:
    """A pulled or imported model by name, or a GGUF file by its path."""
    if looks_like_path(name):
        return _show_file(Path(name).expanduser())
    store = ContentStore(settings.models_dir)
    manifest = pick_format(find_manifests(store, name), preferred_format(settings), loadable=False)
    missing = store.missing_blobs(manifest)
    if missing:
        raise ModelFileError(
            f"{manifest.full_name} is damaged: {', '.join(missing)} is missing: run `localllm pull {manifest.full_name}`"
        )
    entry = entry_for(store, manifest)
    facts = _facts(store, manifest)
    return ModelDetails(
        **vars(entry),
        architecture=facts.architecture,
        parameters=facts.parameters,
        context_length=facts.context_length,
        has_chat_template=bool(facts.chat_template),
        # A Modelfile's LICENSE wins over the file's; otherwise the file speaks first.
        license=(manifest.license if manifest.source.get("kind") == "create" else None) or facts.license
        or manifest.license,
        chat_template=manifest.defaults.get("template") or facts.chat_template,
        defaults=dict(manifest.defaults),
    )


def _show_file(path: Path) -> ModelDetails:
    """What a GGUF file given by path says about itself (its digest is not computed:
    hashing gigabytes to describe a file is not worth the wait)."""
    from localllm.formats.gguf import inspect_gguf

    info = inspect_gguf(path)  # a missing, foreign or truncated file: the reason, exit 2
    facts = gguf_facts([path])
    return ModelDetails(
        name=str(path), path=path, size_bytes=path.stat().st_size, quant=quant_label(path, info), format="gguf",
        modified=path.stat().st_mtime, digest="", architecture=facts.architecture, parameters=facts.parameters,
        context_length=facts.context_length, has_chat_template=bool(facts.chat_template),
        license=facts.license, chat_template=facts.chat_template,
    )


@dataclass(frozen=True)
class Removal:
    names: list[str]  # "name:tag (format)" removed
    freed_bytes: int | None  # None: a pull is running, so blobs are freed by a later rm or pull


def delete_model(name: str, settings) -> Removal:
    """Remove every format of name:tag, then the blobs no other manifest uses."""
    store = ContentStore(settings.models_dir)
    removed = []
    for manifest in find_manifests(store, name):
        if store.delete_manifest(manifest.model_name, manifest.format):
            removed.append(f"{manifest.full_name} ({manifest.format})")
    return Removal(removed, store.collect_garbage())


def remove_model(name: str, settings) -> None:
    delete_model(name, settings)


def import_model(path, name: str, settings) -> ModelEntry:
    """Copy a local GGUF file into the store as `name` (tag `latest` when none is given).
    The original file is left as it is."""
    model_name = parse_model_name(name)
    if model_name.is_hub:
        raise InvalidModelNameError(
            f"{name}: hf.co/ names are for models pulled from the hub: import under your own name, such as `mymodel:latest`"
        )
    if model_name.tag is None:
        model_name = model_name.with_tag("latest")
    store = ContentStore(settings.models_dir)
    guard = store.pull_guard()
    manifest = copy_into_store(Path(path), model_name, settings, store)
    guard.acquire()  # gc must not free the blob before the manifest names it
    try:
        old = store.read_manifest(model_name, "gguf", damaged_ok=True)
        store.write_manifest(manifest)
    finally:
        guard.release()
    if old is not None and old.files != manifest.files:
        store.collect_garbage()
    return entry_for(store, manifest)


def copy_into_store(path: Path, model_name, settings, store: ContentStore) -> Manifest:
    """Put a GGUF file's bytes in the store (once: blobs are named by digest) and return
    the manifest that would name it `model_name`; writing it is the caller's."""
    from localllm.formats.gguf_checks import check_loadable

    src = Path(path).expanduser()
    info = check_loadable(src)  # refuses what `run` would refuse (or crash on), with the reason
    size = src.stat().st_size
    check_disk(store, {f"import-{uuid.uuid4().hex}": size}, f"importing {src}")
    guard = store.pull_guard()
    guard.acquire()
    tmp = store.partials / f"import-{uuid.uuid4().hex}.partial"
    try:
        sha = _copy_hashing(src, tmp, store.root)
        if store.has_blob(sha, size):
            tmp.unlink()
        else:
            store.admit(tmp, sha)
    finally:
        tmp.unlink(missing_ok=True)
        guard.release()
    return Manifest(
        name=model_name.name, tag=model_name.tag, format="gguf", files=(ManifestFile(src.name, sha, size),),
        quant=quant_label(src, info), license=_str_or_none(info.metadata.get("general.license")),
        source={"kind": "import", "path": str(src.resolve())}, created=time.time(),
    )


def _copy_hashing(src: Path, dst: Path, root: Path) -> str:
    digest = hashlib.sha256()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while block := fin.read(8 << 20):
                digest.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:  # the copy is removed by the caller; the original is untouched
            raise disk_full_error(f"importing {src}", root) from None
        raise
    return digest.hexdigest()


def quant_label(path: Path, info) -> str:
    """The file type the header states, else the tensor type holding most weight bytes
    (stories260K states none: F32)."""
    if info.file_type and info.file_type != "unknown":
        return info.file_type
    from gguf.constants import GGMLQuantizationType

    from localllm.formats.gguf import read_header, tensor_nbytes

    _, tensors = read_header(path)
    by_type: dict[int, int] = {}
    for _, shape, ggml_type, _ in tensors:
        try:
            by_type[ggml_type] = by_type.get(ggml_type, 0) + tensor_nbytes(shape, ggml_type)
        except (ValueError, KeyError):
            continue
    if not by_type:
        return ""
    try:
        return GGMLQuantizationType(max(by_type, key=by_type.get)).name
    except ValueError:
        return ""


def _str_or_none(value) -> str | None:
    return str(value) if value else None
