"""The table from architecture name (GGUF `general.architecture`, or a config.json's
`model_type`) to the module that implements it, and model loading from a GGUF file.

Each module provides `from_gguf(metadata, tensors)` and `from_config(config)` (its
`ModelArgs`), `Model(args, weights, dtype)` and `sanitize(hf_tensors)`.
"""

from __future__ import annotations

from types import ModuleType

from localllm.errors import ModelFileError
from localllm.models import gemma3, llama, qwen2, qwen3

ARCHITECTURES: dict[str, ModuleType] = {
    "llama": llama,  # Llama 2/3.x, SmolLM, TinyLlama, and Mistral's GGUFs (written as llama)
    "mistral": llama,  # config.json model_type of Mistral folders
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma3": gemma3,
    "gemma3_text": gemma3,  # config.json model_type of text-only Gemma 3 folders
}


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def architecture_module(name: str, source: str = "") -> ModuleType:
    module = ARCHITECTURES.get(name)
    if module is None:
        where = f"{source}: " if source else ""
        raise ModelFileError(
            f"{where}architecture {name!r} is not supported on the MLX path "
            f"(supported: {', '.join(supported())}): use --backend llamacpp"
        )
    return module


def load_gguf_model(path, dtype=None):
    """(model, GGUFWeights) for a GGUF file; the architecture is checked before any
    tensor is read."""
    import mlx.core as mx

    from localllm.formats.gguf import inspect_gguf
    from localllm.models.gguf_loader import load_gguf

    info = inspect_gguf(path)
    module = architecture_module(info.architecture, str(path))
    weights = load_gguf(path)
    tensors = dict(weights.tensors)
    args = module.from_gguf(weights.metadata, tensors)
    return module.Model(args, tensors, dtype or mx.float32), weights
