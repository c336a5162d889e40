"""Decode attention over a float or 8-bit KV cache (GQA, causal among a few queries).

The trio for this op:
- `DecodeAttentionKernels`: builds the two Metal kernels of sdpa_decode.metal (a float
  cache; an 8-bit cache in MLX's affine layout) with a kernel factory
  (`mx.fast.metal_kernel` on a Mac, the emulator in tests); `metal_kernels()` is the
  Metal instance, None where Metal is missing.
- `reference_attention`: the same attention in plain float32 MLX operations.
- `decode_attention`: the dispatcher: the kernel on Metal for head sizes that are multiples
  of 32 up to 256 (64/128/256 in practice) and up to MAX_QUERIES queries; elsewhere MLX's `scaled_dot_product_attention` (an 8-bit cache
  is dequantized first).

Layouts: q (B, Hq, L, D); keys and values either float arrays (B, Hkv, S_cap, D) or, for
an 8-bit cache, the triple `mx.quantize(x, group_size, bits=8)` gives: packed uint32
(B, Hkv, S_cap, D / 4), scales and biases (B, Hkv, S_cap, D / group). Only the first
`kv_len` positions are valid: the cache buffers are passed whole (no slice, no copy).
Query i is at position kv_len - L + i and sees keys up to it.
"""

from __future__ import annotations

import functools

from . import metal_source
from .metal_source import MetalSource

SOURCE_FILE = "sdpa_decode.metal"
MAX_HEAD_DIM = 256  # each lane holds D / 32 values; the merge buffer is NSG * D floats
SIMDGROUPS = 8
MAX_QUERIES = 16


def is_quantized(cache_part) -> bool:
    return isinstance(cache_part, (tuple, list))


class DecodeAttentionKernels:
    """The kernels of sdpa_decode.metal built with `factory` (`mx.fast.metal_kernel`'s
    signature)."""

    def __init__(self, factory, source: MetalSource | None = None, simdgroups: int = SIMDGROUPS):
        source = source or metal_source.load(SOURCE_FILE)
        self.simdgroups = simdgroups
        self.float_kernel = factory(name="sdpa_decode_float", input_names=["q", "k", "v", "kv_len", "scale"],
                                    output_names=["out"], source=source.kernels["float"], header=source.header)
        self.affine8_kernel = factory(
            name="sdpa_decode_affine8",
            input_names=["q", "k", "k_scales", "k_biases", "v", "v_scales", "v_biases", "kv_len", "scale"],
            output_names=["out"], source=source.kernels["affine8"], header=source.header)

    def __call__(self, q, keys, values, kv_len: int, scale: float):
        b, hq, n_queries, d = q.shape
        check_shapes(q.shape, keys, values, kv_len)
        if not head_dim_fits(d):
            raise ValueError(f"the decode attention kernel takes head sizes that are multiples of 32 up to {MAX_HEAD_DIM}, got {d}")
        common = dict(
            output_shapes=[q.shape], output_dtypes=[q.dtype],
            grid=(32 * self.simdgroups, n_queries, b * hq), threadgroup=(32 * self.simdgroups, 1, 1),
        )
        template = [("D", d), ("NSG", self.simdgroups)]
        if not is_quantized(keys):
            (out,) = self.float_kernel(inputs=[q, keys, values, int(kv_len), float(scale)], template=template, **common)
        else:
            group = d // keys[1].shape[-1]
            (out,) = self.affine8_kernel(inputs=[q, *keys, *values, int(kv_len), float(scale)],
                                         template=[*template, ("G", group)], **common)
        return out


def head_dim_fits(d: int) -> bool:
    return d % 32 == 0 and 32 <= d <= MAX_HEAD_DIM


def kernel_fits(q_shape) -> bool:
    """Whether the kernel takes queries of this shape (B, Hq, L, D)."""
    return head_dim_fits(q_shape[3]) and q_shape[2] <= MAX_QUERIES


def check_shapes(q_shape, keys, values, kv_len: int) -> None:
    b, hq, n_queries, d = q_shape
    if is_quantized(keys):
        k_shape = (*keys[0].shape[:3], keys[0].shape[3] * 4)  # four bytes per packed word
        v_shape = (*values[0].shape[:3], values[0].shape[3] * 4)
        if d % keys[1].shape[-1] or keys[1].shape[:3] != keys[0].shape[:3]:
            raise ValueError(f"8-bit cache scales {tuple(keys[1].shape)} do not group a head of {d} values")
    else:
        k_shape, v_shape = tuple(keys.shape), tuple(values.shape)
    if len(k_shape) != 4 or k_shape != v_shape or k_shape[0] != b or k_shape[3] != d:
        raise ValueError(f"keys and values must be (B, Hkv, S, D) matching q {tuple(q_shape)}; got {k_shape}, {v_shape}")
    if hq % k_shape[1]:
        raise ValueError(f"{hq} query heads do not share {k_shape[1]} KV heads evenly")
    if not n_queries <= kv_len <= k_shape[2]:
        raise ValueError(f"kv_len {kv_len} must cover the {n_queries} queries and fit the cache of {k_shape[2]}")


@functools.cache
def metal_kernels() -> DecodeAttentionKernels | None:
    """The kernels on this machine's Metal device, or None without Metal."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return None
    return DecodeAttentionKernels(mx.fast.metal_kernel)


# ---------------------------------------------------------------------------------------
def dequantize_part(part, kv_len: int | None = None):
    """A cache part as a float32 array (B, Hkv, S, D), its first kv_len positions."""
    import mlx.core as mx

    if not is_quantized(part):
        return part[:, :, :kv_len].astype(mx.float32)
    packed, scales, biases = (a[:, :, :kv_len] for a in part)
    group = packed.shape[-1] * 4 // scales.shape[-1]
    return mx.dequantize(packed, scales.astype(mx.float32), biases.astype(mx.float32), group_size=group, bits=8)


def causal_mask(n_queries: int, kv_len: int):
    """Boolean (L, kv_len): query i sees keys 0 .. kv_len - L + i."""
    import mlx.core as mx

    return mx.arange(kv_len)[None, :] <= (kv_len - n_queries + mx.arange(n_queries))[:, None]


def reference_attention(q, keys, values, kv_len: int, scale: float):
    """The attention the kernels compute, in float32 MLX operations; q's dtype out."""
    import mlx.core as mx

    b, hq, n_queries, d = q.shape
    check_shapes(q.shape, keys, values, kv_len)
    k = dequantize_part(keys, kv_len)[:, :, None]  # (B, Hkv, 1, S, D)
    v = dequantize_part(values, kv_len)[:, :, None]
    hkv = k.shape[1]
    queries = q.astype(mx.float32).reshape(b, hkv, hq // hkv, n_queries, d) * scale
    scores = queries @ k.swapaxes(-1, -2)  # (B, Hkv, R, L, S)
    scores = mx.where(causal_mask(n_queries, kv_len), scores, -mx.inf)
    out = mx.softmax(scores, axis=-1) @ v
    return out.reshape(b, hq, n_queries, d).astype(q.dtype)


def decode_attention(q, keys, values, kv_len: int, scale: float, kernels: DecodeAttentionKernels | None = None):
    """Attention of q against the first kv_len cache positions: the kernel where one is
    at hand (Metal, or `kernels` given) and the shape suits it, else MLX's fused SDPA."""
    import mlx.core as mx

    kernels = kernels or metal_kernels()
    n_queries = q.shape[2]
    if kernels is not None and kernel_fits(q.shape):
        return kernels(q, keys, values, kv_len, scale)
    check_shapes(q.shape, keys, values, kv_len)
    k = dequantize_part(keys, kv_len).astype(q.dtype) if is_quantized(keys) else keys[:, :, :kv_len]
    v = dequantize_part(values, kv_len).astype(q.dtype) if is_quantized(values) else values[:, :, :kv_len]
    mask = causal_mask(n_queries, kv_len) if n_queries > 1 else None
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
