"""`pull`: resolve a name to files on the hub, check the disk, fetch, write the manifest.

    pull_model("llama3.2:1b", settings, on_progress=print)

A catalog name becomes its GGUF (or, for the MLX backend, its MLX) repo and file; a
`hf.co/owner/repo[:quant]` name picks the repo's GGUF file for that quant (Q4_K_M when
none is asked). The repo's revision is resolved once to a commit sha and every download
of the pull is pinned to it. The manifest is written only after every file is verified
and admitted, so an interrupted pull leaves partials to resume and no half model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from localllm.registry.catalog import DEFAULT_QUANT, load_catalog
from localllm.registry.download import BlobRequest, fetch_blob
from localllm.registry.entries import ModelEntry, PullProgress
from localllm.registry.diskspace import DISK_FULL_ERRNOS, check_disk, disk_full_error
from localllm.registry.errors import HubUnavailableError, ModelNotFoundError
from localllm.registry.hub import HubClient, HubFile, RepoSnapshot, RetryPolicy
from localllm.registry.lookup import preferred_format
from localllm.registry.manifest import Manifest, ManifestFile
from localllm.registry.names import ModelName, is_gguf_weights, parse_model_name, quant_from_filename, split_part, split_stem
from localllm.registry.store import ContentStore, safe_relative_path

# Used when the asked-for default (Q4_K_M) is missing and the user named no quant.
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q5_K_S", "Q6_K", "IQ4_XS", "Q8_0", "Q3_K_L", "Q3_K_M", "BF16", "F16", "F32")
MLX_FILE_SUFFIXES = (".safetensors", ".json", ".model", ".tiktoken", ".txt", ".jinja")


@dataclass(frozen=True)
class PullPlan:
    name: ModelName  # canonical, tag included
    format: str
    snapshot: RepoSnapshot
    files: tuple[HubFile, ...]
    quant: str
    license: str | None


def plan_pull(text: str, settings, hub: HubClient, prefer_format: str | None = None) -> PullPlan:
    name = parse_model_name(text)
    fmt = prefer_format or preferred_format(settings)
    if name.is_hub:
        return _plan_hub_name(name, hub.repo_snapshot(name.hub_repo))
    catalog = load_catalog()
    choice = catalog.choose(name)
    if choice is None:
        hint = catalog.suggestions(name.name)
        did_you_mean = f"; did you mean {', '.join(hint)}?" if hint else ""
        raise ModelNotFoundError(
            f"{text} is not in the catalog{did_you_mean} Pull any Hugging Face GGUF repo as "
            "`hf.co/owner/repo[:quant]`, or `localllm import FILE --name NAME` a local file"
        )
    if fmt == "mlx" and (choice.mlx is None or choice.quant != catalog.default_quant):
        if prefer_format == "mlx":
            raise ModelNotFoundError(f"{choice.name} has no MLX version in the catalog: pull it with --format gguf")
        fmt = "gguf"
    source = choice.source(fmt)
    if source is None:
        raise ModelNotFoundError(f"{choice.name} has no {fmt.upper()} source in the catalog")
    snap = hub.repo_snapshot(source.repo)
    license_ = choice.license or snap.license
    if fmt == "mlx":
        return PullPlan(choice.name, "mlx", snap, _mlx_files(snap), "", license_)
    listed = {f.path: f for f in snap.files}
    wanted = source.files.get(choice.quant)
    files = (listed[wanted],) if wanted in listed else _gguf_files(snap, choice.quant, explicit=True)
    return PullPlan(choice.name, "gguf", snap, files, choice.quant, license_)


def _plan_hub_name(name: ModelName, snap: RepoSnapshot) -> PullPlan:
    has_gguf = any(is_gguf_weights(f.path) for f in snap.files)
    paths = {f.path for f in snap.files}
    if not has_gguf and "config.json" in paths and any(p.endswith(".safetensors") for p in paths):
        if name.tag not in (None, "latest"):
            raise ModelNotFoundError(f"hf.co/{snap.repo} is an MLX/safetensors repo with no quant tags: pull it without `:{name.tag}`")
        return PullPlan(name.with_tag("latest"), "mlx", snap, _mlx_files(snap), "", snap.license)
    explicit = name.tag not in (None, "latest")
    quant = name.tag if explicit else DEFAULT_QUANT
    files = _gguf_files(snap, quant, explicit=explicit)
    label = quant_from_filename(files[0].path)  # None for a file named without its quant
    return PullPlan(name.with_tag(label or "latest"), "gguf", snap, files, label or "", snap.license)


def _gguf_files(snap: RepoSnapshot, quant: str, explicit: bool) -> tuple[HubFile, ...]:
    """The file (or the split parts) of `quant` in the repo; a missing quant lists the others."""
    by_quant: dict[str, list[HubFile]] = {}
    for f in snap.files:
        if is_gguf_weights(f.path):
            by_quant.setdefault(quant_from_filename(f.path) or "?", []).append(f)
    if not by_quant:
        raise ModelNotFoundError(f"hf.co/{snap.repo} has no GGUF model files: pick a repo with .gguf files (often named ...-GGUF)")
    available = sorted(by_quant, key=lambda q: (QUANT_PREFERENCE.index(q) if q in QUANT_PREFERENCE else 99, q))
    chosen = quant.upper()
    if chosen not in by_quant:
        if explicit:
            labelled = [q for q in available if q != "?"]
            shown = labelled + (["a file with no quant in its name (pull without a tag)"] if "?" in available else [])
            example = f"hf.co/{snap.repo}:{labelled[0]}" if labelled else f"hf.co/{snap.repo}"
            raise ModelNotFoundError(
                f"hf.co/{snap.repo} has no {chosen} file; available quants: {', '.join(shown)}: "
                f"pull one of them, for example `localllm pull {example}`"
            )
        chosen = available[0]
    candidates = sorted(by_quant[chosen], key=lambda f: (f.path.count("/"), f.path))
    first = candidates[0]
    part = split_part(first.path)
    if part is None:
        singles = [f for f in candidates if split_part(f.path) is None]
        safe_relative_path(singles[0].path)
        return (singles[0],)
    stem = split_stem(first.path)
    parts = sorted((f for f in candidates if split_part(f.path) and split_stem(f.path) == stem), key=lambda f: split_part(f.path))
    if len(parts) != part[1]:
        raise ModelNotFoundError(f"hf.co/{snap.repo}: the {chosen} file is split in {part[1]} parts but {len(parts)} are listed")
    for f in parts:
        safe_relative_path(f.path)
    return tuple(parts)


def _mlx_files(snap: RepoSnapshot) -> tuple[HubFile, ...]:
    files = tuple(
        f for f in snap.files
        if f.path.endswith(MLX_FILE_SUFFIXES) and not f.path.startswith(".") and "/" not in f.path.strip("/")
    )
    if not any(f.path.endswith(".safetensors") for f in files) or not any(f.path == "config.json" for f in files):
        raise ModelNotFoundError(f"hf.co/{snap.repo} is not an MLX model (no config.json and .safetensors weights)")
    for f in files:
        safe_relative_path(f.path)
    return files


def _local_only(text: str, store: ContentStore) -> Manifest | None:
    """The manifest of a name that exists only on this machine (imported, created or
    copied under a name that is not the catalog's or the hub's), else None."""
    from localllm.registry.lookup import find_manifests

    name = parse_model_name(text)
    if name.is_hub or name.name in load_catalog():
        return None
    try:
        manifests = find_manifests(store, text)
    except ModelNotFoundError:
        return None
    return manifests[0] if manifests else None


def pull_model(
    name: str,
    settings,
    on_progress: Callable[[PullProgress], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    prefer_format: str | None = None,
    retry: RetryPolicy | None = None,
) -> ModelEntry:
    """Pull `name` into the store and return its entry. Raises a UserError (with the
    fix) for unknown names, refused access, a full disk, a corrupted download or a
    hub that keeps failing; PullCancelled when `cancel` is set. Partials are kept."""
    steps: list[str] = ["resolving"]

    def report(p: PullProgress) -> None:
        steps.append(p.status)
        if on_progress is not None:
            on_progress(p)

    try:
        return _pull_model(name, settings, report, cancel, prefer_format, retry)
    except OSError as e:
        # Whatever step the disk filled at (a partial, its fsync, a snapshot link, the
        # manifest), what is on disk is resumable: partials are kept, blobs are whole,
        # the manifest is written atomically or not at all.
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(f"{steps[-1]} {name}", settings.models_dir) from None
        raise


def _pull_model(name: str, settings, report, cancel, prefer_format, retry) -> ModelEntry:
    from localllm.registry.inventory import entry_for

    report(PullProgress("resolving"))
    store = ContentStore(settings.models_dir)
    local = _local_only(name, store)
    if local is not None:
        how = {"import": "imported", "create": "created"}.get(local.source.get("kind"), "copied")
        report(PullProgress("success", detail=f"{local.full_name} is a local model ({how} on this machine), "
                                              "not one on the hub: it is already here; nothing to pull"))
        return entry_for(store, local)
    with HubClient(retry=retry) as hub:
        plan = plan_pull(name, settings, hub, prefer_format)
        unverifiable = [f.path for f in plan.files if not (f.sha256 or f.git_oid)]
        if unverifiable:
            raise HubUnavailableError(
                f"{hub.endpoint} lists no checksum for {', '.join(unverifiable)} in hf.co/{plan.snapshot.repo}: "
                "refusing to download it unverified; check HF_ENDPOINT points at a Hugging Face hub"
            )
        pending = {
            BlobRequest(plan.snapshot.repo, plan.snapshot.revision, f.path, f.size, f.sha256, f.git_oid).key: f.size
            for f in plan.files if not (f.sha256 and store.has_blob(f.sha256, f.size))
        }
        check_disk(store, pending, str(plan.name))
        guard = store.pull_guard()
        guard.acquire(cancel=cancel)
        try:
            listed = []
            for f in plan.files:
                req = BlobRequest(plan.snapshot.repo, plan.snapshot.revision, f.path, f.size, f.sha256, f.git_oid)
                listed.append(ManifestFile(f.path, fetch_blob(hub, store, req, report, cancel), f.size))
            report(PullProgress("writing manifest"))
            old = store.read_manifest(plan.name, plan.format, damaged_ok=True)
            manifest = Manifest(
                name=plan.name.name, tag=plan.name.tag, format=plan.format, files=tuple(listed),
                quant=plan.quant, license=plan.license, created=time.time(),
                source={"kind": "hub", "endpoint": hub.endpoint, "repo": plan.snapshot.repo, "revision": plan.snapshot.revision},
            )
            store.write_manifest(manifest)
        finally:
            guard.release()
    if old is not None and old.files != manifest.files:
        store.collect_garbage()  # the previous revision's blobs, unless another model uses them
    entry = entry_for(store, manifest)
    report(PullProgress("success", entry.digest, entry.size_bytes, entry.size_bytes))
    return entry
