"""Qwen3: the llama decoder with an RMS norm over each query and key head before the
rotary embedding (`attn_q_norm`, `attn_k_norm`), no projection bias, and a head size
that need not be dim / heads (`attention.key_length`, config `head_dim`)."""

from __future__ import annotations

from localllm.models import llama
from localllm.models.llama import Model, ModelArgs, sanitize  # noqa: F401  (this architecture's model)


def from_gguf(meta: dict, tensors: dict) -> ModelArgs:
    return llama.args_from_gguf(meta, tensors, traditional=False)


def from_config(config: dict) -> ModelArgs:
    return llama.args_from_config(config, "qwen3")
