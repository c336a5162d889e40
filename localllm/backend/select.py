"""The backend table and `load_backend`: pick a backend, check the model file and memory
through that backend's own loader, then load.

`BACKENDS` has one row per backend folder (a `BackendLoader`); adding a backend adds a
row here and nothing else. `auto` is MLX on Apple Silicon where its row can run, llama.cpp
elsewhere. The loaders import their compute library only when a model is loaded.
"""

from __future__ import annotations

import functools
import platform
import sys
from dataclasses import replace
from pathlib import Path

from localllm.backend.preflight import check_memory
from localllm.backend.protocol import Backend, BackendLoader
from localllm.config import Settings
from localllm.cpu_backend.loader import LOADER as LLAMACPP_LOADER
from localllm.errors import BackendUnavailableError, ModelFileError
from localllm.models.loader import LOADER as MLX_LOADER
from localllm.tokenizer.protocol import Tokenizer

BACKENDS: dict[str, BackendLoader] = {loader.name: loader for loader in (LLAMACPP_LOADER, MLX_LOADER)}

# How a user knows each backend (messages name it this way).
DISPLAY_NAMES = {"llamacpp": "llama.cpp", "mlx": "MLX"}

# Backends whose weights and KV live in a unified-memory GPU's working set.
GPU_BACKENDS = frozenset({"mlx"})


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def resolve_backend_name(requested: str) -> str:
    """The backend `requested` means here, before a model is known ("auto" picks one)."""
    if requested == "auto":
        mlx = BACKENDS.get("mlx")
        return "mlx" if is_apple_silicon() and mlx is not None and mlx.unavailable_reason() is None else "llamacpp"
    return requested


def choose_backend(requested: str, model_path: str) -> tuple[str, str | None]:
    """(backend name, a one-line note or None) for loading `model_path`. `auto` takes
    MLX on Apple Silicon when MLX can run this model (its architecture is in the MLX
    table, its tensor types repack), llama.cpp otherwise, and says why in the note."""
    name = resolve_backend_name(requested)
    if requested != "auto" or name != "mlx" or Path(model_path).is_dir():
        return name, None
    try:
        BACKENDS["mlx"].inspect(model_path)
    except ModelFileError as e:
        reason = str(e).split(": ", 1)[-1]
        return "llamacpp", f"using llama.cpp for this model: the MLX path cannot run it ({reason})"
    return "mlx", None


def backend_loader(name: str) -> BackendLoader:
    """The table row for `name`, or a one-line error saying why it cannot run here."""
    loader = BACKENDS.get(name)
    if loader is None:
        raise BackendUnavailableError(
            f"the {DISPLAY_NAMES.get(name, name)} backend is not available in this version of localllm yet: use --backend llamacpp"
        )
    reason = loader.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    return loader


def warn_beyond_training(ctx_size: int, info) -> None:
    """A context longer than the model was trained on is honoured, as llama.cpp and
    Ollama do, with one line saying the text may degrade past that point."""
    if info.context_length and ctx_size > info.context_length:
        print(f"localllm: warning: a context of {ctx_size} tokens is beyond the {info.context_length} "
              f"{Path(info.path).name} was trained on: text past that point may degrade", file=sys.stderr)


def load_backend(model_path: str, settings: Settings, force: bool = False, notice=None) -> Backend:
    """Check the model file, check it fits in memory (unless `force`), then load it into
    the backend the settings ask for. `notice(line)` hears why `auto` did not take the
    platform's first choice (default: printed to stderr)."""
    name, note = choose_backend(settings.backend, model_path)
    if note:
        (notice or _print_notice)(note)
    loader = backend_loader(name)
    info = loader.inspect(model_path)
    ctx_size = settings.ctx_size
    if settings.ctx_size_asked:
        warn_beyond_training(ctx_size, info)
    elif info.context_length:  # the default never goes past what the model was trained on
        ctx_size = min(ctx_size, info.context_length)
    settings = replace(settings, ctx_size=ctx_size)
    # llama.cpp offloading to Metal counts against the GPU's working set too.
    on_gpu = name in GPU_BACKENDS or (name == "llamacpp" and settings.gpu_layers != 0 and is_apple_silicon())
    estimate = functools.partial(loader.estimate_memory, sequences=settings.resolved_parallel)
    check_memory(info, settings, estimate, force=force, gpu=on_gpu)
    return loader.load(info, settings)


def _print_notice(line: str) -> None:
    print(f"localllm: {line}", file=sys.stderr)


def load_gguf_vocabulary(path) -> Tokenizer:
    """The vocabulary of a GGUF file alone (no weights), through llama.cpp's tokenizer:
    for the tokenizer layer, which imports no backend folder."""
    from localllm.cpu_backend.vocab import LlamaCppVocabulary

    return LlamaCppVocabulary.from_file(path)
