"""Pick and load a backend: `auto` is MLX on Apple Silicon, llama.cpp elsewhere.

Backend libraries are imported here lazily, only when a model is actually loaded.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import replace
from pathlib import Path

from localllm.formats.gguf import inspect_gguf
from localllm.backend.protocol import Backend
from localllm.config import Settings
from localllm.errors import BackendUnavailableError, ModelFileError


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def resolve_backend_name(requested: str) -> str:
    if requested == "auto":
        return "mlx" if is_apple_silicon() and mlx_backend_available() else "llamacpp"
    return requested


def mlx_backend_available() -> bool:
    """True once the MLX backend exists in this build (it lands with its own issue)."""
    return False


def supported_gguf_architectures() -> frozenset[str]:
    from gguf.constants import MODEL_ARCH_NAMES

    return frozenset(MODEL_ARCH_NAMES.values())


def warn_beyond_training(ctx_size: int, info) -> None:
    """A context longer than the model was trained on is honoured, as llama.cpp and
    Ollama do, with one line saying the text may degrade past that point."""
    if info.context_length and ctx_size > info.context_length:
        print(f"localllm: warning: a context of {ctx_size} tokens is beyond the {info.context_length} "
              f"{Path(info.path).name} was trained on: text past that point may degrade", file=sys.stderr)


# KV buffer of the llama.cpp backend, in full contexts: only the working cache lives
# there (the KV-cache manager parks others in host memory).
KV_POOL = 1


def load_backend(model_path: str, settings: Settings, force: bool = False) -> Backend:
    """Validate the model file, check it fits in memory (unless `force`), then load it
    into the backend the settings ask for."""
    name = resolve_backend_name(settings.backend)
    if name == "mlx":
        raise BackendUnavailableError(
            "the MLX backend is not available in this version of localllm yet: use --backend llamacpp"
        )
    info = inspect_gguf(model_path)
    if info.n_params == 0:
        raise ModelFileError(f"{model_path}: holds only a vocabulary, no weights: give the model's full GGUF file")
    if info.architecture not in supported_gguf_architectures():
        raise ModelFileError(
            f"{model_path}: unsupported model architecture {info.architecture!r}: "
            "llama.cpp cannot run it; pick a model of a supported family (llama, qwen2, gemma2, phi3, ...)"
        )
    try:
        from localllm.cpu_backend.llamacpp import LlamaCppBackend
    except ImportError as e:
        raise BackendUnavailableError(
            f"the llama.cpp backend cannot be imported ({e}): reinstall with `pip install llama-cpp-python`"
        ) from None
    ctx_size = settings.ctx_size
    if settings.ctx_size_asked:
        warn_beyond_training(ctx_size, info)
    elif info.context_length:  # the default never goes past what the model was trained on
        ctx_size = min(ctx_size, info.context_length)
    from localllm.backend.preflight import check_memory

    check_memory(info, replace(settings, ctx_size=ctx_size), force=force, kv_contexts=KV_POOL)
    return LlamaCppBackend(
        info,
        ctx_size=ctx_size,
        kv_pool=KV_POOL,
        threads=settings.resolved_threads,
        kv_type=settings.kv_type,
        verbose=settings.verbose,
    )
