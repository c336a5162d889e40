"""Finding a pulled model by the name a user typed, and saying what to do when none is.

`llama3.2` means the catalog's default tag (`llama3.2:3b`), `llama3.2:latest` too;
`llama3.2:1b-q4_k_m` is `llama3.2:1b` (Q4_K_M is the default quant); `hf.co/o/r` means
its Q4_K_M tag, or the only tag pulled; an imported `mine` means `mine:latest`. Where a
name:tag is pulled in two formats, the backend in use picks (MLX on the MLX backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localllm.errors import ModelFileError, UserError
from localllm.registry.catalog import DEFAULT_QUANT, load_catalog
from localllm.registry.errors import ModelNotFoundError
from localllm.registry.manifest import Manifest
from localllm.registry.modelfile import ModelDefaults
from localllm.registry.names import ModelName, is_path_syntax, looks_like_path, parse_model_name
from localllm.registry.store import ContentStore


def preferred_format(settings) -> str:
    """The format the backend in use loads: MLX where the MLX backend runs, else GGUF."""
    from localllm.backend.select import resolve_backend_name

    return "mlx" if resolve_backend_name(settings.backend) == "mlx" else "gguf"


def _tag_candidates(name: ModelName, store: ContentStore) -> list[str]:
    catalog = load_catalog()
    tags: list[str] = []
    if name.tag:
        tags.append(name.tag)
    if not name.is_hub and name.name in catalog:
        try:
            tags.append(catalog.choose(name).name.tag)
        except UserError:
            pass  # a tag the catalog does not know: only an import can have it
    if name.tag is None:
        tags.append("latest")
        if name.is_hub:
            tags.append(DEFAULT_QUANT)
        pulled = {m.tag for m in store.manifests_named(name)}
        if len(pulled) == 1:
            tags.append(pulled.pop())
    return list(dict.fromkeys(tags))


def find_manifests(store: ContentStore, text: str) -> list[Manifest]:
    """Every format of the first matching pulled name:tag; raises ModelNotFoundError."""
    name = parse_model_name(text)
    for tag in _tag_candidates(name, store):
        found = store.manifests_named(ModelName(name.name, tag))
        if found:
            return found
    raise not_pulled_error(text, name, store)


def not_pulled_error(text: str, name: ModelName, store: ContentStore) -> ModelNotFoundError:
    catalog = load_catalog()
    others = sorted({m.full_name for m in store.manifests_named(ModelName(name.name))})
    pulled_note = f" (pulled: {', '.join(others)})" if others else ""
    if name.is_hub or name.name in catalog:
        target = text.strip()
        if not name.is_hub:
            try:
                target = str(catalog.choose(name).name)
            except UserError as e:
                return ModelNotFoundError(f"{e}{pulled_note}")
        return ModelNotFoundError(f"{target} is not pulled{pulled_note}: run `localllm pull {target}`")
    if others:
        return ModelNotFoundError(f"{text} is not pulled{pulled_note}: name one of those tags, or import the model again")
    pulled = [m.full_name for _, m in store.all_manifests()]
    hint = catalog.suggestions(name.name, extra=pulled)
    did_you_mean = f" Did you mean {', '.join(hint)}?" if hint else ""
    return ModelNotFoundError(
        f"unknown model {text!r}: it is not pulled, not in the catalog and not a file.{did_you_mean} "
        "`localllm list` shows pulled models; `localllm pull hf.co/owner/repo` fetches any GGUF repo"
    )


def pick_format(manifests: list[Manifest], prefer: str, loadable: bool = True) -> Manifest:
    """The manifest in the preferred format, else GGUF (llama.cpp loads it anywhere);
    with `loadable=False` (for `show`), whatever format there is."""
    by_format = {m.format: m for m in manifests}
    if prefer in by_format:
        return by_format[prefer]
    if "gguf" in by_format or not loadable:
        return by_format.get("gguf", manifests[0])
    only = manifests[0]
    raise ModelNotFoundError(
        f"{only.full_name} is pulled only as MLX, which the {prefer.upper()} backend in use cannot load: "
        f"run `localllm pull {only.full_name} --format gguf`"
    )


@dataclass(frozen=True)
class ResolvedModel:
    """What a name stands for: the file (or MLX folder) to load, the model's full name
    (`gemma3:latest` for `gemma3`; a path as given), and a created model's defaults."""

    path: Path
    name: str
    defaults: ModelDefaults = ModelDefaults()


def resolve_model_path(name: str, settings, *, allow_paths: bool = True) -> Path:
    """See `resolve_model`: only the path."""
    return resolve_model(name, settings, allow_paths=allow_paths).path


def resolve_model(name: str, settings, *, allow_paths: bool = True) -> ResolvedModel:
    """A model name (`llama3.2:1b`, `hf.co/owner/repo:Q4_K_M`) or a local GGUF path, to
    the file (or MLX folder) to load. Raises a UserError naming what to do when nothing
    matches, or when a pulled model's files are missing from the store. With
    `allow_paths=False` (the server's default) only pulled names resolve, and nothing
    outside the store is looked at."""
    if not allow_paths:
        if is_path_syntax(name):
            raise ModelNotFoundError(f"model {name[:200]!r} is a file path, and this server serves pulled models only: "
                                     "use a pulled name (`localllm list`), or start the server with --allow-model-paths")
    elif looks_like_path(name):
        return ResolvedModel(Path(name).expanduser(), name)
    store = ContentStore(settings.models_dir)
    manifest = pick_format(find_manifests(store, name), preferred_format(settings))
    missing = store.missing_blobs(manifest)
    if missing:
        raise ModelFileError(
            f"{manifest.full_name} is damaged: {', '.join(missing)} is missing from {store.blobs}: "
            f"run `localllm pull {manifest.full_name}` to fetch it again"
        )
    return ResolvedModel(store.model_path(manifest), manifest.full_name, ModelDefaults.from_json(manifest.defaults))


def resolve_loadable_model(name: str, settings) -> Path:
    """`resolve_model_path`, then the header checks a load makes (GGUF files; MLX folders
    are left to their backend), for commands that load later: the chat app and the
    server refuse a bad file at once, with the one line `run` gives."""
    from localllm.formats.gguf_checks import check_loadable

    path = resolve_model_path(name, settings)
    if not (path.is_dir() and preferred_format(settings) == "mlx"):
        check_loadable(path)
    return path
