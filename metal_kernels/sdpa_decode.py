"""Decode attention over a float or int8 KV cache (GQA, causal among a few queries).

The trio for this op:
- `DecodeAttentionKernels`: builds the two Metal kernels of sdpa_decode.metal (float
  cache, int8 cache with per-group scales) with a kernel factory (`mx.fast.metal_kernel`
  on a Mac, the emulator in tests); `metal_kernels()` is the Metal instance, None where
  Metal is missing.
- `reference_attention`: the same attention in plain float32 MLX operations.
- `decode_attention`: the dispatcher: the kernel on Metal for head sizes 64/128/256 and up
  to MAX_QUERIES queries; elsewhere MLX's `scaled_dot_product_attention` (an int8 cache
  is dequantized first).

Layouts: q (B, Hq, L, D); the cache k, v (B, Hkv, S_cap, D) of which the first `kv_len`
positions are valid (the cache buffer is passed whole: no slice, no copy); int8 scales
(B, Hkv, S_cap, D / group). Query i is at position kv_len - L + i and sees keys up to it.
`quantize_kv` is the int8 format's quantizer (symmetric, float16 scale per group, as
GGUF's Q8_0).
"""

from __future__ import annotations

import functools

from . import metal_source
from .metal_source import MetalSource

SOURCE_FILE = "sdpa_decode.metal"
HEAD_DIMS = (64, 128, 256)
SIMDGROUPS = 8
KV_GROUP = 32
MAX_QUERIES = 16


class DecodeAttentionKernels:
    """The kernels of sdpa_decode.metal built with `factory` (`mx.fast.metal_kernel`'s
    signature)."""

    def __init__(self, factory, source: MetalSource | None = None, simdgroups: int = SIMDGROUPS):
        source = source or metal_source.load(SOURCE_FILE)
        self.simdgroups = simdgroups
        self.float_kernel = factory(name="sdpa_decode_float", input_names=["q", "k", "v", "kv_len", "scale"],
                                    output_names=["out"], source=source.kernels["float"], header=source.header)
        self.int8_kernel = factory(name="sdpa_decode_int8",
                                   input_names=["q", "k", "v", "k_scales", "v_scales", "kv_len", "scale"],
                                   output_names=["out"], source=source.kernels["int8"], header=source.header)

    def __call__(self, q, k, v, kv_len: int, scale: float, k_scales=None, v_scales=None):
        b, hq, n_queries, d = q.shape
        check_shapes(q.shape, k.shape, v.shape, kv_len)
        if d not in HEAD_DIMS:
            raise ValueError(f"the decode attention kernel takes head sizes {HEAD_DIMS}, got {d}")
        common = dict(
            output_shapes=[q.shape], output_dtypes=[q.dtype],
            grid=(32 * self.simdgroups, n_queries, b * hq), threadgroup=(32 * self.simdgroups, 1, 1),
        )
        template = [("D", d), ("NSG", self.simdgroups)]
        if k_scales is None:
            (out,) = self.float_kernel(inputs=[q, k, v, int(kv_len), float(scale)], template=template, **common)
        else:
            group = d // k_scales.shape[-1]
            (out,) = self.int8_kernel(inputs=[q, k, v, k_scales, v_scales, int(kv_len), float(scale)],
                                      template=[*template, ("G", group)], **common)
        return out


def check_shapes(q_shape, k_shape, v_shape, kv_len: int) -> None:
    b, hq, n_queries, d = q_shape
    if len(k_shape) != 4 or tuple(k_shape) != tuple(v_shape) or k_shape[0] != b or k_shape[3] != d:
        raise ValueError(f"k and v must be (B, Hkv, S, D) matching q {tuple(q_shape)}; got {tuple(k_shape)}, {tuple(v_shape)}")
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
def quantize_kv(x, group: int = KV_GROUP):
    """(int8 values, float16 scales) of x (..., D): symmetric, one scale per `group`
    values, values rounded with the stored (float16) scale so dequantizing is exact."""
    import mlx.core as mx

    shape = x.shape
    grouped = x.astype(mx.float32).reshape(*shape[:-1], shape[-1] // group, group)
    scales = (mx.max(mx.abs(grouped), axis=-1) / 127.0).astype(mx.float16)
    safe = mx.where(scales == 0, mx.array(1.0, mx.float16), scales).astype(mx.float32)
    values = mx.clip(mx.round(grouped / safe[..., None]), -127, 127).astype(mx.int8)
    return values.reshape(shape), scales


def dequantize_kv(values, scales):
    import mlx.core as mx

    shape = values.shape
    group = shape[-1] // scales.shape[-1]
    grouped = values.astype(mx.float32).reshape(*shape[:-1], scales.shape[-1], group)
    return (grouped * scales.astype(mx.float32)[..., None]).reshape(shape)


def causal_mask(n_queries: int, kv_len: int):
    """Boolean (L, kv_len): query i sees keys 0 .. kv_len - L + i."""
    import mlx.core as mx

    return mx.arange(kv_len)[None, :] <= (kv_len - n_queries + mx.arange(n_queries))[:, None]


def reference_attention(q, k, v, kv_len: int, scale: float, k_scales=None, v_scales=None):
    """The attention the kernels compute, in float32 MLX operations; q's dtype out."""
    import mlx.core as mx

    b, hq, n_queries, d = q.shape
    check_shapes(q.shape, k.shape, v.shape, kv_len)
    hkv = k.shape[1]
    if k_scales is not None:
        k, v = dequantize_kv(k, k_scales), dequantize_kv(v, v_scales)
    keys = k[:, :, :kv_len].astype(mx.float32)[:, :, None]  # (B, Hkv, 1, S, D)
    values = v[:, :, :kv_len].astype(mx.float32)[:, :, None]
    queries = q.astype(mx.float32).reshape(b, hkv, hq // hkv, n_queries, d) * scale
    scores = queries @ keys.swapaxes(-1, -2)  # (B, Hkv, R, L, S)
    scores = mx.where(causal_mask(n_queries, kv_len), scores, -mx.inf)
    out = mx.softmax(scores, axis=-1) @ values
    return out.reshape(b, hq, n_queries, d).astype(q.dtype)


def decode_attention(q, k, v, kv_len: int, scale: float, k_scales=None, v_scales=None,
                     kernels: DecodeAttentionKernels | None = None):
    """Attention of q against the first kv_len cache positions: the kernel where one is
    at hand (Metal, or `kernels` given) and the shape suits it, else MLX's fused SDPA."""
    import mlx.core as mx

    kernels = kernels or metal_kernels()
    n_queries, d = q.shape[2], q.shape[3]
    if kernels is not None and d in HEAD_DIMS and n_queries <= MAX_QUERIES:
        return kernels(q, k, v, kv_len, scale, k_scales, v_scales)
    check_shapes(q.shape, k.shape, v.shape, kv_len)
    if k_scales is not None:
        k, v = dequantize_kv(k[:, :, :kv_len], k_scales[:, :, :kv_len]), dequantize_kv(v[:, :, :kv_len], v_scales[:, :, :kv_len])
        k, v = k.astype(q.dtype), v.astype(q.dtype)
    else:
        k, v = k[:, :, :kv_len], v[:, :, :kv_len]
    mask = causal_mask(n_queries, kv_len) if n_queries > 1 else None
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
