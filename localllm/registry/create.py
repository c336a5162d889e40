"""`create` and `cp`: new names over blobs already in the store.

A created model is a manifest like any other: the FROM model's files (no byte is
copied for a FROM name; a FROM file is imported once, by digest) plus its own defaults
(parameters, system prompt, template, opening messages) and licence. `cp` writes the
same manifests under another name. Both replace a name already in use, as Ollama does;
they return what the name meant before, so a command can say so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from localllm.errors import ModelFileError
from localllm.registry.entries import ModelEntry
from localllm.registry.errors import InvalidModelNameError
from localllm.registry.lookup import find_manifests, pick_format, preferred_format
from localllm.registry.manifest import Manifest
from localllm.registry.modelfile import ModelDefaults, Modelfile, ModelfileError
from localllm.registry.names import ModelName, is_gguf_weights, is_path_syntax, parse_model_name
from localllm.registry.store import ContentStore


@dataclass(frozen=True)
class Written:
    entry: ModelEntry
    replaced: bool  # the name stood for another model (other files or settings) before


def local_name(text: str) -> ModelName:
    """A name to write under: not a hub name (those are the hub's), tag `latest` by default."""
    name = parse_model_name(text)
    if name.is_hub:
        raise InvalidModelNameError(f"{text}: hf.co/ names are for models pulled from the hub: "
                                    "name it your own way, such as `mymodel:latest`")
    return name if name.tag else name.with_tag("latest")


def create_model(name: str, modelfile: Modelfile, settings, base_dir: Path | None = None) -> Written:
    """Make `name` from a parsed Modelfile. FROM is a pulled name, a GGUF file, or a
    folder holding one GGUF file (paths relative to `base_dir`, the Modelfile's folder)."""
    target = local_name(name)
    store = ContentStore(settings.models_dir)
    base = _from_source(modelfile.source, settings, store, base_dir)
    defaults = modelfile.defaults.merged_over(ModelDefaults.from_json(base.defaults))
    manifest = replace(
        base, name=target.name, tag=target.tag, defaults=defaults.to_json(), created=time.time(),
        license=modelfile.license if modelfile.license is not None else base.license,
        source={"kind": "create", "from": modelfile.source, **({"path": base.source["path"]}
                                                                 if "path" in base.source else {})},
    )
    return _write(store, [manifest])


def copy_model(source: str, destination: str, settings) -> Written:
    """Every format of `source` under the name `destination`."""
    target = local_name(destination)
    store = ContentStore(settings.models_dir)
    manifests = find_manifests(store, source)
    copies = [replace(m, name=target.name, tag=target.tag, created=time.time()) for m in manifests]
    return _write(store, copies)


def _write(store: ContentStore, manifests: list[Manifest]) -> Written:
    from localllm.registry.inventory import entry_for

    first = manifests[0]
    old = store.read_manifest(first.model_name, first.format, damaged_ok=True)
    def what(m: Manifest):  # what a name means: its bytes and its settings
        return [(f.sha256, f.size) for f in m.files], m.defaults, m.license

    replaced = old is not None and what(old) != what(first)
    guard = store.pull_guard()  # gc must not free these blobs between the check and the write
    guard.acquire()
    try:
        for m in manifests:
            missing = store.missing_blobs(m)
            if missing:
                raise ModelFileError(f"{m.full_name}: {', '.join(missing)} is missing from the store: "
                                     "pull or import the model again")
            store.write_manifest(m)
    finally:
        guard.release()
    return Written(entry_for(store, first), replaced)


def _from_source(source: str, settings, store: ContentStore, base_dir: Path | None) -> Manifest:
    """The manifest a FROM line builds on (a file is imported into the store first)."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if is_path_syntax(source) or (base_dir is not None and path.exists()):
        return _import_file(_gguf_in(path, source), settings, store)
    manifest = pick_format(find_manifests(store, source), preferred_format(settings), loadable=False)
    return store.read_manifest(manifest.model_name, manifest.format) or manifest


def _gguf_in(path: Path, source: str) -> Path:
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if is_gguf_weights(p.name))
        if len(found) != 1:
            what = "no GGUF file" if not found else f"{len(found)} GGUF files"
            raise ModelfileError(f"FROM {source}: the folder holds {what}: name the .gguf file to build on")
        return found[0]
    if not path.exists():
        raise ModelfileError(f"FROM {source}: no such file or folder ({path}): give a pulled model's name, "
                             "or the path of a GGUF file (relative to the Modelfile)")
    return path


def _import_file(path: Path, settings, store: ContentStore) -> Manifest:
    from localllm.registry.inventory import copy_into_store

    return copy_into_store(path, ModelName("localllm-create-staging", "latest"), settings, store)
