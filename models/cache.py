"""Per-layer KV caches for the MLX models, all with one small interface.

- `KVCache`: every position, in buffers grown 256 positions at a time; float16 (or the
  compute dtype) storage.
- `QuantizedKVCache`: the same, 8-bit affine (group 32) keys and values: about half the
  bytes of float16; attention reads it through `mx.quantized_matmul`.
- `SlidingKVCache`: a sliding-window layer (Gemma 3's local layers) keeps only the last
  `window - 1` positions plus `keep` more, so it can still be trimmed back by up to `keep`
  tokens; `trimmable_to(n)` says honestly whether a given cut is possible.

Each holds positions [start, offset) for batch 1, keys and values [1, n_kv_heads, S, D].
`update(k, v)` appends a chunk and returns what attention needs.
"""

from __future__ import annotations

import mlx.core as mx

STEP = 256
KV_GROUP = 32


class KVCache:
    """All positions of one layer."""

    def __init__(self, dtype=mx.float16):
        self.dtype = dtype
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    start = 0

    def _grow(self, k: mx.array, v: mx.array, n_new: int) -> None:
        need = self.offset + n_new
        if self.keys is not None and need <= self.keys.shape[2]:
            return
        size = -(-need // STEP) * STEP
        B, H, _, Dk = k.shape
        Dv = v.shape[3]
        new_k = mx.zeros((B, H, size, Dk), self.dtype)
        new_v = mx.zeros((B, H, size, Dv), self.dtype)
        if self.keys is not None and self.offset:
            new_k[:, :, : self.offset] = self.keys[:, :, : self.offset]
            new_v[:, :, : self.offset] = self.values[:, :, : self.offset]
        self.keys, self.values = new_k, new_v

    def update(self, k: mx.array, v: mx.array):
        n = k.shape[2]
        self._grow(k, v, n)
        self.keys[:, :, self.offset : self.offset + n] = k.astype(self.dtype)
        self.values[:, :, self.offset : self.offset + n] = v.astype(self.dtype)
        self.offset += n
        return self.keys[:, :, : self.offset], self.values[:, :, : self.offset]

    def trimmable_to(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim_to(self, n: int) -> None:
        if not self.trimmable_to(n):
            raise ValueError(f"cannot trim a cache of {self.offset} positions to {n}")
        self.offset = n

    def state(self) -> dict[str, mx.array]:
        if not self.offset:
            return {}
        return {"keys": self.keys[:, :, : self.offset], "values": self.values[:, :, : self.offset]}

    def set_state(self, arrays: dict[str, mx.array], start: int, offset: int) -> None:
        self.keys = self.values = None
        self.offset = 0
        if arrays:
            self.update(arrays["keys"], arrays["values"])
        self.offset = offset

    def copy_prefix_from(self, other: "KVCache", n: int) -> None:
        prefix = {k: v[:, :, :n] for k, v in other.state().items()}
        self.set_state(prefix, 0, n)

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class QuantizedKVCache(KVCache):
    """All positions of one layer, 8-bit affine quantized in groups of 32."""

    bits = 8

    def __init__(self):
        super().__init__(mx.uint32)
        self.parts: list[mx.array] | None = None  # k, k_scales, k_biases, v, v_scales, v_biases

    def _quantize(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        return mx.quantize(x, group_size=KV_GROUP, bits=self.bits)

    def update(self, k: mx.array, v: mx.array):
        n = k.shape[2]
        new = [*self._quantize(k), *self._quantize(v)]
        need = self.offset + n
        if self.parts is None or need > self.parts[0].shape[2]:
            size = -(-need // STEP) * STEP
            grown = []
            for i, a in enumerate(new):
                buf = mx.zeros((*a.shape[:2], size, a.shape[3]), a.dtype)
                if self.parts is not None and self.offset:
                    buf[:, :, : self.offset] = self.parts[i][:, :, : self.offset]
                grown.append(buf)
            self.parts = grown
        for buf, a in zip(self.parts, new):
            buf[:, :, self.offset : need] = a
        self.offset = need
        return self.fetch()

    def fetch(self):
        held = [a[:, :, : self.offset] for a in self.parts]
        return tuple(held[:3]), tuple(held[3:])

    def buffers(self):
        """The whole key and value buffers (packed, scales, biases each), valid up to offset."""
        return tuple(self.parts[:3]), tuple(self.parts[3:])

    def state(self) -> dict[str, mx.array]:
        if not self.offset:
            return {}
        names = ("k", "k_scales", "k_biases", "v", "v_scales", "v_biases")
        return {name: a[:, :, : self.offset] for name, a in zip(names, self.parts)}

    def set_state(self, arrays: dict[str, mx.array], start: int, offset: int) -> None:
        self.parts = None
        self.offset = 0
        if arrays:
            names = ("k", "k_scales", "k_biases", "v", "v_scales", "v_biases")
            self.parts = [arrays[n] for n in names]
        self.offset = offset

    @property
    def nbytes(self) -> int:
        return 0 if self.parts is None else sum(a.nbytes for a in self.parts)


class SlidingKVCache:
    """The last `window - 1` positions of a sliding-window layer, plus `keep` more so
    that short rewinds (a regenerated reply, a rejected draft) stay possible."""

    def __init__(self, window: int, keep: int = STEP, dtype=mx.float16):
        self.window, self.keep, self.dtype = window, keep, dtype
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.start = 0
        self.offset = 0

    def update(self, k: mx.array, v: mx.array):
        k, v = k.astype(self.dtype), v.astype(self.dtype)
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = mx.concatenate([self.keys, k], axis=2)
            self.values = mx.concatenate([self.values, v], axis=2)
        self.offset += k.shape[2]
        return self.keys, self.values

    def drop_old(self) -> None:
        """Forget positions no later query can see and no allowed trim needs (called
        after a forward, once attention has used this chunk's keys)."""
        first_needed = self.offset - (self.window - 1) - self.keep
        # Drop `keep` positions at a time at least, so decode does not copy every token.
        if first_needed - self.start >= max(1, self.keep):
            cut = first_needed - self.start
            self.keys = self.keys[:, :, cut:]
            self.values = self.values[:, :, cut:]
            self.start = first_needed

    def trimmable_to(self, n: int) -> bool:
        """A cut to `n` is possible when every key a query at position >= n can see
        (positions > n - window) is still here, or when nothing is kept at all."""
        return n == 0 or (self.start + self.window - 1 <= n <= self.offset) or (self.start == 0 and n <= self.offset)

    def trim_to(self, n: int) -> None:
        if not self.trimmable_to(n):
            raise ValueError(
                f"a sliding-window cache holding positions {self.start}..{self.offset} cannot be cut to {n}"
            )
        if n == 0:
            self.keys = self.values = None
            self.start = self.offset = 0
            return
        held = n - self.start
        self.keys = self.keys[:, :, :held]
        self.values = self.values[:, :, :held]
        self.offset = n

    def state(self) -> dict[str, mx.array]:
        return {} if self.keys is None else {"keys": self.keys, "values": self.values}

    def set_state(self, arrays: dict[str, mx.array], start: int, offset: int) -> None:
        self.keys, self.values = arrays.get("keys"), arrays.get("values")
        self.start, self.offset = start, offset

    def copy_prefix_from(self, other: "SlidingKVCache", n: int) -> None:
        if not other.trimmable_to(n):
            raise ValueError(f"positions before {n} are no longer held by this sliding-window cache")
        held = n - other.start
        arrays = {} if n == 0 else {"keys": other.keys[:, :, :held], "values": other.values[:, :, :held]}
        self.set_state(arrays, other.start if n else 0, n)

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


LayerCache = KVCache | QuantizedKVCache | SlidingKVCache
