"""The MLX backend: our own model code (this folder's architectures) behind the backend
protocol (`localllm.backend.protocol`).

- Caches: one `MLXCache` per sequence, a list of layer caches (`cache.py`): trim,
  sliding-window capability, save/load state as bytes, f16 or 8-bit ("q8_0") keys/values.
- Logits stay on the device (`MLXLogits`): `argmax` runs there and copies one int per
  row; `numpy(row)` copies one row.
- Decode is pipelined: `forward` queues the step with `mx.async_eval` and returns at
  once, so the caller's own work (detokenizing, stop strings) overlaps the compute until
  it reads the logits.
- Prefill runs in chunks of `PREFILL_CHUNK` tokens, each evaluated before the next, which
  bounds the attention scores and activations held at once.
On Linux MLX runs on the CPU in float32: a correctness path (see README); on Apple
Silicon the compute dtype is float16 (not verified here: no Metal on this machine).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Sequence

import mlx.core as mx
import numpy as np

from localllm.backend.protocol import BatchItem, CacheCapability, MemoryReport, forward_each, window_min_tokens
from localllm.errors import ContextOverflowError
from localllm.models.cache import KV_GROUP, STEP, SlidingKVCache
from localllm.types import ModelInfo

PREFILL_CHUNK = 512
STATE_FORMAT = 1


class MLXCache:
    """The layer caches of one sequence and the tokens they hold."""

    def __init__(self, layers: list):
        self.layers = layers
        self.tokens: list[int] = []

    def close(self) -> None:
        self.layers = []
        self.tokens = []


class MLXLogits:
    """Logits rows [n_rows, vocab] still on the device."""

    __slots__ = ("_rows", "n_rows")

    def __init__(self, rows: mx.array):
        self._rows = rows
        self.n_rows = rows.shape[0]

    def numpy(self, row: int | None = None) -> np.ndarray:
        rows = self._rows if row is None else self._rows[row]
        return np.asarray(rows.astype(mx.float32))

    def argmax(self) -> np.ndarray:
        return np.array(mx.argmax(self._rows, axis=-1)).astype(np.int64)


def compute_dtype():
    """float16 where a Metal GPU runs MLX, float32 on the CPU (where float16 matmuls
    through quantized_matmul were measured 30x slower)."""
    return mx.float16 if mx.metal.is_available() else mx.float32


def model_identity(path: str) -> str:
    """Path, sizes and modification times of the weights: a saved state is refused once
    the files behind it change (an MLX folder's weights rewritten in place, say)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p]
    return "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


class MLXBackend:
    """A model loaded into MLX (`localllm.backend.protocol.Backend`)."""

    name = "mlx"

    def __init__(self, info: ModelInfo, model, weights_bytes: int, vocabulary, *, ctx_size: int = 4096,
                 kv_type: str = "f16", dtype=None, sliding_keep: int = STEP):
        if kv_type not in ("f16", "q8_0", "f32"):
            raise ValueError(f"unknown KV type {kv_type!r}")
        self.info, self.model, self.vocabulary = info, model, vocabulary
        self.kv_type = kv_type
        # Positions a sliding-window layer keeps beyond its window: how far back a cache
        # can still be trimmed (a regenerated reply, rejected draft tokens).
        self.sliding_keep = sliding_keep
        self.dtype = dtype or model.dtype
        self.weights_bytes = weights_bytes
        self.n_ctx = ctx_size
        self.max_batch_tokens = PREFILL_CHUNK
        self.vocab_size = int(model.args.vocab_size)
        self._caches: list[MLXCache] = []
        self._closed = False
        self._model_identity = model_identity(info.path)

    # -- caches --------------------------------------------------------------------------

    def new_cache(self) -> MLXCache:
        cache = MLXCache(self._layer_caches())
        self._caches.append(cache)
        return cache

    def _layer_caches(self) -> list:
        return self.model.make_cache(self.kv_type, sliding_keep=self.sliding_keep)

    def trim(self, cache: MLXCache, n_tokens: int) -> None:
        if n_tokens >= len(cache.tokens):
            return
        capability = self.cache_capability(cache)
        if not capability.allows(n_tokens):
            raise ValueError(
                f"this cache cannot be cut back to {n_tokens} tokens: its sliding-window layers dropped "
                f"older keys, so {capability.min_tokens} is the shortest prefix it still holds exactly"
            )
        for layer in cache.layers:
            layer.trim_to(n_tokens)
        del cache.tokens[n_tokens:]

    def cache_capability(self, cache: MLXCache) -> CacheCapability:
        least = 0
        for layer in cache.layers:
            if isinstance(layer, SlidingKVCache):
                least = max(least, window_min_tokens(layer.start, layer.window))
        least = min(least, len(cache.tokens))
        # save_state keeps every position a layer holds, so a reload cuts as far back.
        return CacheCapability(trimmable=True, min_tokens=least, restored_min_tokens=least)

    def cache_bytes(self, cache: MLXCache) -> int:
        return sum(layer.nbytes for layer in cache.layers)

    @property
    def kv_bytes_per_token(self) -> int:
        a = self.model.args
        # 8-bit: one byte per value plus a scale and a bias (compute dtype) per group.
        q8 = 1.0 + 2 * self.dtype.size / KV_GROUP
        per_value = {"f16": 2.0, "f32": self.dtype.size, "q8_0": q8}[self.kv_type]
        full = sum(1 for layer in self.model.make_cache(self.kv_type) if not isinstance(layer, SlidingKVCache))
        return max(1, int(full * a.n_kv_heads * a.head_dim * 2 * per_value))

    # -- compute -------------------------------------------------------------------------

    def forward(self, tokens: Sequence[int], cache: MLXCache, all_logits: bool = False) -> MLXLogits:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("forward needs at least one token")
        if len(cache.tokens) + len(tokens) > self.n_ctx:
            raise ContextOverflowError(len(cache.tokens) + len(tokens), self.n_ctx, 0)
        rows = []
        start = len(cache.tokens)
        try:
            for lo in range(0, len(tokens), PREFILL_CHUNK):
                chunk = tokens[lo : lo + PREFILL_CHUNK]
                last = lo + len(chunk) == len(tokens)
                out = self.model(mx.array([chunk], dtype=mx.int32), cache.layers, all_logits=all_logits)
                rows.append(out[0] if all_logits else out)
                if not last:
                    # Evaluate this chunk (its keys and values) before building the next.
                    mx.eval(rows[-1], *self._state_arrays(cache))
                cache.tokens.extend(chunk)
        except BaseException:
            self._cut_layers(cache, start)
            raise
        logits = rows[0] if len(rows) == 1 else mx.concatenate(rows, axis=0)
        mx.async_eval(logits)
        return MLXLogits(logits)

    def forward_batch(self, items: Sequence[BatchItem]) -> list:
        # Not yet one batched pass over several caches (left for later): one after another.
        return forward_each(self, items)

    def _state_arrays(self, cache: MLXCache) -> list[mx.array]:
        return [a for layer in cache.layers for a in layer.state().values()]

    def _cut_layers(self, cache: MLXCache, n: int) -> None:
        """After a failed forward: bring every layer back to the tokens the cache lists."""
        del cache.tokens[n:]
        for layer in cache.layers:
            if layer.offset > n:
                if layer.trimmable_to(n):
                    layer.trim_to(n)
                else:
                    layer.trim_to(0)
                    cache.tokens.clear()

    # -- state ---------------------------------------------------------------------------

    def _state_header(self, cache: MLXCache) -> dict:
        return {
            "format": STATE_FORMAT,
            "model": self._model_identity,
            "kv_type": self.kv_type,
            "n_layers": len(cache.layers),
            "tokens": len(cache.tokens),
            "positions": [[layer.start, layer.offset] for layer in cache.layers],
        }

    def save_state(self, cache: MLXCache) -> bytes:
        arrays = {}
        for i, layer in enumerate(cache.layers):
            for name, a in layer.state().items():
                arrays[f"{i}.{name}"] = np.array(a)
        buf = io.BytesIO()
        np.savez(buf, header=np.frombuffer(json.dumps(self._state_header(cache)).encode(), np.uint8), **arrays)
        return buf.getvalue()

    def load_state(self, cache: MLXCache, tokens: Sequence[int], data: bytes) -> bool:
        fresh = self._layer_caches()
        cache.layers, cache.tokens = fresh, []
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                expected = self._state_header(MLXCache(fresh))
                if any(header.get(k) != expected[k] for k in ("format", "model", "kv_type", "n_layers")):
                    return False
                if header["tokens"] != len(tokens):
                    return False
                per_layer: list[dict] = [{} for _ in fresh]
                for key in z.files:
                    if key != "header":
                        i, name = key.split(".", 1)
                        per_layer[int(i)][name] = mx.array(z[key])
            for layer, arrays, (start, offset) in zip(fresh, per_layer, header["positions"]):
                layer.set_state(arrays, start, offset)
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            cache.layers = self._layer_caches()
            return False
        cache.tokens = list(tokens)
        return True

    # -- resources -----------------------------------------------------------------------

    def memory(self) -> MemoryReport:
        kv = sum(self.cache_bytes(c) for c in self._caches if c.layers)
        self._caches = [c for c in self._caches if c.layers]
        # What MLX holds beyond weights and caches: live temporaries and its buffer cache.
        held = int(mx.get_active_memory()) + int(mx.get_cache_memory())
        return MemoryReport(weights_bytes=self.weights_bytes, kv_cache_bytes=kv,
                            compute_bytes=max(0, held - self.weights_bytes - kv))

    def peak_memory_bytes(self) -> int:
        """MLX's own peak allocation since the process started (device memory on Metal)."""
        return int(mx.get_peak_memory())

    def close(self) -> None:
        for c in self._caches:
            c.close()
        self._caches = []
        self.model = None
        self._closed = True

