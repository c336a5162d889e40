"""Building blocks the architecture files share: norms, rotary embeddings, attention over
a layer cache (plain, 8-bit, sliding-window), gated MLPs. On Metal, attention over an
8-bit cache runs localllm.metal_kernels' decode-attention kernel.

Shapes: activations [B, L, dim]; per-head tensors [B, heads, L, head_dim].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from localllm.metal_kernels import sdpa_decode
from localllm.models.cache import KV_GROUP, LayerCache, QuantizedKVCache, SlidingKVCache
from localllm.models.weights import Weight


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, weight.astype(x.dtype), eps)


def linear(x: mx.array, weight: Weight, bias: mx.array | None = None) -> mx.array:
    y = weight(x)
    return y if bias is None else y + bias.astype(y.dtype)


@dataclass(frozen=True)
class Rope:
    """Rotary embedding of the first `dims` features of each head.

    `traditional` rotates adjacent pairs (GGUF llama weights, whose Q/K rows llama.cpp's
    converter permuted for it); otherwise the two halves (Hugging Face layout, qwen2/3,
    gemma3). `periods`, when given, are per-pair wavelengths / 2pi (Llama 3 scaling);
    `scale` is linear position scaling (1 / factor)."""

    dims: int
    base: float
    traditional: bool = False
    scale: float = 1.0
    periods: mx.array | None = None

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        if self.periods is not None:
            return mx.fast.rope(x, self.dims, traditional=self.traditional, base=None, scale=self.scale,
                                offset=offset, freqs=self.periods)
        return mx.fast.rope(x, self.dims, traditional=self.traditional, base=self.base, scale=self.scale,
                            offset=offset)


def rope_periods(dims: int, base: float, factors) -> mx.array:
    """Wavelengths/2pi for `mx.fast.rope(freqs=...)` from per-pair divisors such as a
    GGUF `rope_freqs` tensor: theta_i = pos / (base**(2i/dims) * factor_i)."""
    exponents = mx.arange(0, dims, 2, dtype=mx.float32) / dims
    return (mx.power(mx.array(base, mx.float32), exponents) * mx.array(factors, mx.float32)).astype(mx.float32)


def llama3_rope_factors(dims: int, base: float, factor: float, low: float, high: float, original: int) -> list[float]:
    """Llama 3.1's per-frequency divisors from a config.json `rope_scaling` entry."""
    out = []
    low_wl, high_wl = original / low, original / high
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * base ** (i / dims)
        if wavelen < high_wl:
            out.append(1.0)
        elif wavelen > low_wl:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return out


def _mask(q_len: int, q_start: int, k_start: int, k_len: int, window: int | None) -> mx.array | None:
    """Boolean [q_len, k_len]: key position <= query position (and within the window)."""
    if q_len == 1 and (window is None or k_len < window):
        return None
    q_pos = mx.arange(q_start, q_start + q_len)[:, None]
    k_pos = mx.arange(k_start, k_start + k_len)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos > q_pos - window)
    return allowed


class PackedLayer:
    """One layer's caches for several sequences packed along the token axis of one
    forward pass (`MLXBackend.forward_batch`): sequence i owns `lengths[i]` consecutive
    tokens and `caches[i]`. Projections and MLPs run once over the packed tokens (the
    weights are read once for all sequences); rope and attention run per sequence, at its
    own positions over its own cache, so no padding or cross-sequence mask is needed."""

    __slots__ = ("caches", "lengths")

    def __init__(self, caches: list, lengths: list[int]):
        self.caches, self.lengths = caches, lengths


def rope_attend(q: mx.array, k: mx.array, v: mx.array, cache, rope: Rope, scale: float,
                window: int | None = None) -> mx.array:
    """Rotate q, k [B, H, L, D] at the cache's positions, then `attend`; `cache` is one
    layer cache or a `PackedLayer` (each sequence's slice rotated and attended alone)."""
    if isinstance(cache, PackedLayer):
        outs, lo = [], 0
        for c, n in zip(cache.caches, cache.lengths):
            part = slice(lo, lo + n)
            outs.append(rope_attend(q[:, :, part], k[:, :, part], v[:, :, part], c, rope, scale, window))
            lo += n
        return mx.concatenate(outs, axis=1)
    q, k = rope(q, cache.offset), rope(k, cache.offset)
    return attend(q, k, v, cache, scale, window)


def attend(q: mx.array, k: mx.array, v: mx.array, cache: LayerCache, scale: float, window: int | None = None) -> mx.array:
    """Store k, v [B, Hkv, L, D] in `cache` and attend q [B, Hq, L, D] over everything
    it holds; returns [B, L, Hq*D]."""
    B, Hq, L, D = q.shape
    q_start = cache.offset
    if isinstance(cache, QuantizedKVCache):
        keys, values = cache.update(k, v)
        kernels = sdpa_decode.metal_kernels()
        if kernels is not None and window is None and sdpa_decode.kernel_fits(q.shape):
            # The Metal kernel reads the whole 8-bit buffers (no slice, no copy) up to offset.
            whole_keys, whole_values = cache.buffers()
            out = kernels(q, whole_keys, whole_values, cache.offset, scale)
        else:
            out = _quantized_attention(q, keys, values, scale, _mask(L, q_start, 0, cache.offset, window))
    else:
        keys, values = cache.update(k, v)
        start = cache.start
        mask = _mask(L, q_start, start, keys.shape[2], window)
        out = mx.fast.scaled_dot_product_attention(
            q, keys.astype(q.dtype), values.astype(q.dtype), scale=scale, mask=mask
        )
        if isinstance(cache, SlidingKVCache):
            cache.drop_old()
    return out.transpose(0, 2, 1, 3).reshape(B, L, -1)


def _quantized_attention(q, keys, values, scale, mask):
    """Attention over 8-bit keys/values without dequantizing the cache: scores and the
    weighted sum go through `mx.quantized_matmul`. GQA: queries grouped per KV head."""
    B, Hq, L, D = q.shape
    Hkv = keys[0].shape[1]
    rep = Hq // Hkv
    q = (q * scale).reshape(B, Hkv, rep, L, D)
    k = tuple(a[:, :, None] for a in keys)  # [B, Hkv, 1, S, ...]
    v = tuple(a[:, :, None] for a in values)
    scores = mx.quantized_matmul(q, *k, transpose=True, group_size=KV_GROUP, bits=8)  # [B, Hkv, rep, L, S]
    if mask is not None:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    weights = mx.softmax(scores, axis=-1, precise=True)
    out = mx.quantized_matmul(weights, *v, transpose=False, group_size=KV_GROUP, bits=8)
    return out.reshape(B, Hq, L, -1)


def split_heads(x: mx.array, n_heads: int, head_dim: int) -> mx.array:
    B, L, _ = x.shape
    return x.reshape(B, L, n_heads, head_dim).transpose(0, 2, 1, 3)  # [B, heads, L, head_dim]


def swiglu(x: mx.array, gate: Weight, up: Weight, down: Weight) -> mx.array:
    return down(nn_silu(gate(x)) * up(x))


def geglu(x: mx.array, gate: Weight, up: Weight, down: Weight) -> mx.array:
    return down(gelu_tanh(gate(x)) * up(x))


def nn_silu(x: mx.array) -> mx.array:
    return x * mx.sigmoid(x)


def gelu_tanh(x: mx.array) -> mx.array:
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
