"""A reference backend in plain numpy: a llama forward pass over an F32/F16 GGUF
(stories260K), implementing `localllm.backend.protocol.Backend` with no compute library.

It is small on purpose (the model's math in a hundred lines, no batching tricks): the
conformance suite holds it to the same rules as llama.cpp, and engine and KV-cache tests
use it where llama.cpp is not the point. Its vocabulary is whatever `Tokenizer` it is
given (SentencePiece for stories260K, so nothing here needs llama.cpp).

Math as llama.cpp computes a llama: RMS norm, rotary embeddings on adjacent pairs (GGUF
stores Q and K permuted for that), grouped-query attention, SwiGLU. Float64 inside, so it
agrees with llama2.c's float32 run to well below any greedy tie.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

from localllm.backend.protocol import CacheCapability, HostLogits, MemoryReport, copy_through_state, forward_each
from localllm.errors import ContextOverflowError
from localllm.formats.gguf import inspect_gguf
from localllm.tokenizer.protocol import Tokenizer

STATE_MAGIC = b"NPKV1"


class NumpyCache:
    """Keys (after rotary embedding) and values per layer: [positions, kv heads, head dim]."""

    def __init__(self, n_layers: int, n_kv: int, head_dim: int):
        self.tokens: list[int] = []
        empty = np.zeros((0, n_kv, head_dim))
        self.keys = [empty] * n_layers
        self.values = [empty] * n_layers
        self.closed = False

    def close(self) -> None:
        self.tokens, self.keys, self.values, self.closed = [], [], [], True


class NumpyReferenceBackend:
    name = "numpy"
    decodes_ahead = False

    def __init__(self, path: str | Path, vocabulary: Tokenizer, ctx_size: int = 2048):
        self.info = inspect_gguf(str(path))
        self.vocabulary = vocabulary
        reader = gguf.GGUFReader(str(path))
        self.w = {}
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        meta, arch = self.info.metadata, self.info.architecture
        if arch != "llama":
            raise ValueError(f"the numpy reference runs llama models only, not {arch!r}")
        self.dim = int(meta[f"{arch}.embedding_length"])
        self.n_layers = int(meta[f"{arch}.block_count"])
        self.n_heads = int(meta[f"{arch}.attention.head_count"])
        self.n_kv = int(meta.get(f"{arch}.attention.head_count_kv", self.n_heads))
        self.head_dim = self.dim // self.n_heads
        self.eps = float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5))
        base = float(meta.get(f"{arch}.rope.freq_base", 10000.0))
        self.inv_freq = base ** -(np.arange(0, self.head_dim, 2) / self.head_dim)
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])
        self.vocab_size = self.output.shape[0]
        self.n_ctx = min(ctx_size, self.info.context_length or ctx_size)
        self.max_batch_tokens = 512

    # -- caches ------------------------------------------------------------------------

    def new_cache(self) -> NumpyCache:
        return NumpyCache(self.n_layers, self.n_kv, self.head_dim)

    def forward_batch(self, items) -> list[HostLogits]:
        return forward_each(self, items)

    def trim(self, cache: NumpyCache, n_tokens: int) -> None:
        if n_tokens < len(cache.tokens):
            cache.keys = [k[:n_tokens] for k in cache.keys]
            cache.values = [v[:n_tokens] for v in cache.values]
            del cache.tokens[n_tokens:]

    def cache_capability(self, cache: NumpyCache) -> CacheCapability:
        return CacheCapability(trimmable=True)  # every key is kept: cut anywhere

    def cache_bytes(self, cache: NumpyCache) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(cache.keys, cache.values))

    @property
    def kv_bytes_per_token(self) -> int:
        return self.n_layers * 2 * self.n_kv * self.head_dim * 8

    def save_state(self, cache: NumpyCache) -> bytes:
        out = io.BytesIO()
        out.write(STATE_MAGIC)
        np.save(out, np.stack([np.stack(cache.keys), np.stack(cache.values)]))
        return out.getvalue()

    def copy_prefix(self, source: NumpyCache, cache: NumpyCache, n_tokens: int) -> None:
        copy_through_state(self, source, cache, n_tokens)

    def load_state(self, cache: NumpyCache, tokens: Sequence[int], data: bytes) -> bool:
        self.trim(cache, 0)
        if not data.startswith(STATE_MAGIC):
            return False
        try:
            kv = np.load(io.BytesIO(data[len(STATE_MAGIC):]), allow_pickle=False)
        except ValueError:
            return False
        if kv.shape != (2, self.n_layers, len(tokens), self.n_kv, self.head_dim):
            return False
        cache.keys, cache.values = list(kv[0]), list(kv[1])
        cache.tokens = list(tokens)
        return True

    # -- compute -----------------------------------------------------------------------

    def forward(self, tokens: Sequence[int], cache: NumpyCache, all_logits: bool = False) -> HostLogits:
        start, n = len(cache.tokens), len(tokens)
        if start + n > self.n_ctx:
            raise ContextOverflowError(start + n, self.n_ctx, 0)
        positions = np.arange(start, start + n)
        h = self.w["token_embd.weight"][np.asarray(tokens)]
        for i in range(self.n_layers):
            h = h + self._attention(self._norm(h, f"blk.{i}.attn_norm.weight"), i, positions, cache)
            h = h + self._mlp(self._norm(h, f"blk.{i}.ffn_norm.weight"), i)
        cache.tokens.extend(tokens)
        rows = h if all_logits else h[-1:]
        return HostLogits((self._norm(rows, "output_norm.weight") @ self.output.T).astype(np.float32))

    def _norm(self, x: np.ndarray, weight: str) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * self.w[weight]

    def _rope(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x [T, heads, head_dim]: rotate adjacent pairs by position x frequency."""
        angle = positions[:, None, None] * self.inv_freq[None, None, :]  # [T, 1, head_dim/2]
        cos, sin = np.cos(angle), np.sin(angle)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
        return out

    def _attention(self, x: np.ndarray, i: int, positions: np.ndarray, cache: NumpyCache) -> np.ndarray:
        p, T = f"blk.{i}.", x.shape[0]
        q = self._rope((x @ self.w[p + "attn_q.weight"].T).reshape(T, self.n_heads, self.head_dim), positions)
        k = self._rope((x @ self.w[p + "attn_k.weight"].T).reshape(T, self.n_kv, self.head_dim), positions)
        v = (x @ self.w[p + "attn_v.weight"].T).reshape(T, self.n_kv, self.head_dim)
        cache.keys[i] = keys = np.concatenate([cache.keys[i], k])
        cache.values[i] = values = np.concatenate([cache.values[i], v])
        group = self.n_heads // self.n_kv
        keys, values = np.repeat(keys, group, axis=1), np.repeat(values, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, keys) / math.sqrt(self.head_dim)  # [heads, T, all]
        causal = np.arange(keys.shape[0])[None, :] <= positions[:, None]
        scores = np.where(causal[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return np.einsum("hqk,khd->qhd", probs, values).reshape(T, self.dim) @ self.w[p + "attn_output.weight"].T

    def _mlp(self, x: np.ndarray, i: int) -> np.ndarray:
        p = f"blk.{i}."
        gate = x @ self.w[p + "ffn_gate.weight"].T
        return (gate / (1 + np.exp(-gate)) * (x @ self.w[p + "ffn_up.weight"].T)) @ self.w[p + "ffn_down.weight"].T

    # -- resources ---------------------------------------------------------------------

    def memory(self) -> MemoryReport:
        return MemoryReport(weights_bytes=sum(w.nbytes for w in self.w.values()), kv_cache_bytes=0)

    def close(self) -> None:
        self.w = {}
