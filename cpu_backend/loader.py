"""The llama.cpp row of the backend table: can it run here, which GGUF files it takes,
what a load needs in memory, and the load itself.

Importing this module does not import llama_cpp (the CLI's --help and the server's start
stay fast); `load` does.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from localllm.backend.preflight import OVERHEAD_BYTES, MemoryEstimate
from localllm.formats.gguf_checks import check_loadable
from localllm.types import ModelInfo

KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}
BATCH_TOKENS = 512


@dataclass(frozen=True)
class _Shape:
    n_layer: int
    n_head: int
    n_head_kv: int
    kv_width: int  # key + value width of one KV head
    n_embd: int
    n_ff: int
    n_vocab: int


def _shape(info: ModelInfo) -> _Shape:
    meta, arch = info.metadata, info.architecture

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, (int, float)) and value else default

    n_embd = num("embedding_length", 0)
    n_head = num("attention.head_count", 1)
    head_dim = n_embd // n_head if n_head else 0
    return _Shape(
        n_layer=num("block_count", 0),
        n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head),
        kv_width=num("attention.key_length", head_dim) + num("attention.value_length", head_dim),
        n_embd=n_embd,
        n_ff=num("feed_forward_length", 4 * n_embd),
        n_vocab=info.vocab_size or 32000,
    )


def estimate_llamacpp_memory(info: ModelInfo, ctx_size: int, kv_type: str, kv_contexts: int = 1) -> MemoryEstimate:
    """From the GGUF header alone:
      weights   the tensor bytes (llama.cpp maps them; every page is touched when decoding)
      KV cache  layers x KV heads x (key + value width) x cells x bytes per value, where the
                cells are the context times the KV contexts the backend keeps
      compute   llama.cpp's graph buffers for a 512-token batch: attention scores over the
                whole cache (not with flash attention, which q8_0 KV turns on), the logits
                of the batch, and the layer activations
      overhead  the process itself (Python, numpy, the library), a fixed allowance
    Sliding-window layers (Gemma 2) are counted at full context, so it errs high for them."""
    shape = _shape(info)
    ctx = ctx_size  # honoured beyond the training context, as the backend loads it
    cells = ctx * max(1, kv_contexts)
    weights = int(info.metadata.get("_weights_bytes") or 0) or (Path(info.path).stat().st_size if Path(info.path).exists() else 0)
    kv = int(shape.n_layer * shape.n_head_kv * shape.kv_width * cells * KV_BYTES_PER_VALUE[kv_type])
    scores = 0 if kv_type == "q8_0" else shape.n_head * cells  # flash attention never holds them all
    compute = 4 * BATCH_TOKENS * (scores + shape.n_vocab + 4 * shape.n_embd + 2 * shape.n_ff)
    return MemoryEstimate(weights, kv, compute, OVERHEAD_BYTES, ctx, kv_type, kv_contexts)


class LlamaCppLoader:
    """`localllm.backend.protocol.BackendLoader` for llama.cpp on the CPU."""

    name = "llamacpp"

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return "the llama.cpp backend needs llama-cpp-python: reinstall with `pip install llama-cpp-python`"
        return None

    def inspect(self, path: str) -> ModelInfo:
        # Every header value llama.cpp would assert on, weights present, a known architecture.
        return check_loadable(path)

    def estimate_memory(self, info: ModelInfo, ctx_size: int, kv_type: str, sequences: int = 1) -> MemoryEstimate:
        # The KV buffer holds a full context for each sequence that decodes at once
        # (--parallel; the idle working cache is one of them, other caches are parked in
        # host memory by the KV-cache manager), so none can run out of room mid-reply.
        return estimate_llamacpp_memory(info, ctx_size, kv_type, kv_contexts=sequences)

    def load(self, info: ModelInfo, settings):
        from localllm.cpu_backend.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            info,
            ctx_size=settings.ctx_size,
            kv_pool=settings.resolved_parallel,
            threads=settings.resolved_threads,
            adapt_threads=settings.threads == 0,
            kv_type=settings.kv_type,
            flash_attn=settings.flash_attn,
            gpu_layers=settings.gpu_layers,
            calibration_dir=settings.cache_dir,
            verbose=settings.verbose,
        )


LOADER = LlamaCppLoader()
