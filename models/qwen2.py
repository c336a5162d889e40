"""Qwen2 / Qwen2.5: the llama decoder with a bias on the q, k and v projections and
rotation of the two halves of each head (GGUF keeps Hugging Face's row order)."""

from __future__ import annotations

from localllm.models import llama
from localllm.models.llama import Model, ModelArgs, sanitize  # noqa: F401  (this architecture's model)


def from_gguf(meta: dict, tensors: dict) -> ModelArgs:
    return llama.args_from_gguf(meta, tensors, traditional=False)


def from_config(config: dict) -> ModelArgs:
    return llama.args_from_config(config, "qwen2")
