"""The MLX backend: our own model code (this folder's architectures) behind the backend
protocol (`localllm.backend.protocol`).

- Caches: one `MLXCache` per sequence, a list of layer caches (`cache.py`): trim,
  sliding-window capability, save/load state as bytes, f16 or 8-bit ("q8_0") keys/values.
- Logits stay on the device (`MLXLogits`): `argmax` runs there and copies one int per
  row; `numpy(row)` copies one row.
- Decode is pipelined (`decodes_ahead`): `forward` queues the step with `mx.async_eval`
  and returns at once, and takes a token still on the device (`MLXPendingToken`, from
  `MLXLogits.argmax_pending`), so greedy decoding builds and queues step n+1 before
  reading token n (the engine's `greedy_ahead`, batching.py), as mlx-lm's generate does.
- `forward_batch` packs several caches' tokens into one model call (`PackedLayer`).
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

from localllm.backend.protocol import BatchItem, CacheCapability, MemoryReport, copy_through_state, window_min_tokens
from localllm.errors import ContextOverflowError
from localllm.models.cache import KV_GROUP, STEP, SlidingKVCache
from localllm.models.layers import PackedLayer
from localllm.types import ModelInfo

PREFILL_CHUNK = 512
STATE_FORMAT = 1


class MLXPendingToken:
    """A token picked on the device (`MLXLogits.argmax_pending`) that `forward` can be fed
    before its value reaches the host; `item()` waits for it and reads it once."""

    __slots__ = ("array", "_value")

    def __init__(self, array: mx.array):
        self.array = array  # int32 [1], lazy until evaluated
        self._value: int | None = None

    def item(self) -> int:
        if self._value is None:
            self._value = int(self.array.item())
        return self._value

    __int__ = item


class MLXCache:
    """The layer caches of one sequence and the tokens they hold. Tokens fed while still
    on the device (`MLXPendingToken`) are read into `tokens` the first time it is asked."""

    def __init__(self, layers: list):
        self.layers = layers
        self._tokens: list[int] = []
        self._unread: list[MLXPendingToken] = []

    @property
    def tokens(self) -> list[int]:
        if self._unread:
            self._tokens.extend(p.item() for p in self._unread)
            self._unread.clear()
        return self._tokens

    @tokens.setter
    def tokens(self, value: list[int]) -> None:
        self._tokens, self._unread = list(value), []

    @property
    def n_tokens(self) -> int:
        """len(tokens), without waiting for tokens still on the device."""
        return len(self._tokens) + len(self._unread)

    def append_fed(self, tokens: Sequence) -> None:
        for t in tokens:
            if isinstance(t, MLXPendingToken):
                self._unread.append(t)
            elif self._unread:
                self.tokens.append(t)
            else:
                self._tokens.append(t)

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

    def argmax_pending(self, row: int) -> MLXPendingToken:
        # The same device argmax as `argmax` (first index on ties), queued, not read.
        token = mx.argmax(self._rows[row], axis=-1).astype(mx.int32).reshape(1)
        mx.async_eval(token)
        return MLXPendingToken(token)


def token_array(tokens: Sequence) -> mx.array:
    """int32 [n] of host ids and pending device tokens, in order."""
    parts, run = [], []
    for t in tokens:
        if isinstance(t, MLXPendingToken):
            if run:
                parts.append(mx.array(run, dtype=mx.int32))
                run = []
            parts.append(t.array)
        else:
            run.append(t)
    if run:
        parts.append(mx.array(run, dtype=mx.int32))
    return parts[0] if len(parts) == 1 else mx.concatenate(parts)


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

    # Decode runs one step ahead where the engine's sampling can stay on the device
    # (plain greedy): `forward` returns once the step is queued (mx.async_eval) and takes
    # a token still on the device (`MLXLogits.argmax_pending`), so the engine builds and
    # queues the next step while this one computes, as mlx-lm's generate loop does.
    decodes_ahead = True

    def forward(self, tokens: Sequence, cache: MLXCache, all_logits: bool = False) -> MLXLogits:
        tokens = list(tokens)
        if not tokens:
            raise ValueError("forward needs at least one token")
        self._check_room([BatchItem(cache, tokens)])
        rows = []
        start = cache.n_tokens
        try:
            for lo in range(0, len(tokens), PREFILL_CHUNK):
                chunk = tokens[lo : lo + PREFILL_CHUNK]
                (out,) = self._pass([BatchItem(cache, chunk, all_logits)])
                if lo + len(chunk) < len(tokens):
                    # Evaluate this chunk (its keys and values) before building the next.
                    mx.eval(out, *self._state_arrays(cache))
                if all_logits or not rows:
                    rows.append(out)
                else:
                    rows[0] = out  # only the last position's logits are asked for
        except BaseException:
            self._cut_layers(cache, start)
            raise
        logits = rows[0] if len(rows) == 1 else mx.concatenate(rows, axis=0)
        mx.async_eval(logits)
        return MLXLogits(logits)

    def forward_batch(self, items: Sequence[BatchItem]) -> list[MLXLogits]:
        """One model call over all items' tokens packed along the sequence axis
        (`layers.PackedLayer`): the projections and MLPs read the weights once for every
        sequence, attention runs per sequence over its own cache at its own positions.
        Items past `max_batch_tokens` together go one after another (in chunks)."""
        self._check_room(items)
        if len(items) <= 1 or sum(len(item.tokens) for item in items) > self.max_batch_tokens:
            return [self.forward(item.tokens, item.cache, item.all_logits) for item in items]
        starts = [item.cache.n_tokens for item in items]
        try:
            rows = self._pass(items)
        except BaseException:
            for item, start in zip(items, starts):
                self._cut_layers(item.cache, start)
            raise
        mx.async_eval(*rows)
        return [MLXLogits(r) for r in rows]

    def _check_room(self, items: Sequence[BatchItem]) -> None:
        for item in items:
            if item.cache.n_tokens + len(item.tokens) > self.n_ctx:
                raise ContextOverflowError(item.cache.n_tokens + len(item.tokens), self.n_ctx, 0)

    def _pass(self, items: Sequence[BatchItem]) -> list[mx.array]:
        """One model call feeding every item's tokens to its cache; each item's logits
        rows [n, vocab] (its last position, or every fed position with all_logits)."""
        lengths = [len(item.tokens) for item in items]
        ids = token_array([t for item in items for t in item.tokens])[None]  # [1, T]
        if len(items) == 1:
            out = self.model(ids, items[0].cache.layers, all_logits=items[0].all_logits)
            rows = [out[0] if items[0].all_logits else out]
        else:
            n_layers = len(items[0].cache.layers)
            layers = [PackedLayer([item.cache.layers[j] for item in items], lengths) for j in range(n_layers)]
            picks, ends, lo = [], [], 0
            for item, n in zip(items, lengths):
                picks.extend(range(lo, lo + n) if item.all_logits else [lo + n - 1])
                ends.append(len(picks))
                lo += n
            out = self.model(ids, layers, rows=mx.array(picks, dtype=mx.int32))[0]  # [R, vocab]
            rows = [out[a:b] for a, b in zip([0, *ends[:-1]], ends)]
        for item in items:
            item.cache.append_fed(item.tokens)
        return rows

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

    def copy_prefix(self, source: MLXCache, cache: MLXCache, n_tokens: int) -> None:
        copy_through_state(self, source, cache, n_tokens)

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

