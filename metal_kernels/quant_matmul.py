"""Products with GGUF-quantized weights (Q4_K, Q6_K, Q8_0) kept in block layout.

The trio for this op:
- `QuantMatmulKernels`: builds the Metal kernels of quant_matmul.metal with a kernel
  factory (`mx.fast.metal_kernel` on a Mac; the emulator in tests) and runs them on up
  to MAX_ROWS rows of activations (decode, speculative verification, small prefill
  chunks); `metal_kernels()` is the Metal instance, None where Metal is missing.
- `dequantize` / `reference_matmul`: the same product in plain MLX operations (weights
  unpacked to float32 first), exact to llama.cpp's dequantization.
- `quant_matmul`: the dispatcher: the kernel on Metal for up to MAX_ROWS rows, the
  reference everywhere else.

Weights are a uint8 array of shape (rows, bytes per row), as GGUF stores a 2-D tensor of
these types: row r is K / block_values blocks of block_bytes bytes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from . import metal_source
from .metal_source import MetalSource

SOURCE_FILE = "quant_matmul.metal"
MAX_ROWS = 16


@dataclass(frozen=True)
class BlockFormat:
    name: str  # the kernel's name in the .metal file
    values: int  # weights per block
    bytes: int  # bytes per block


FORMATS = {
    "q8_0": BlockFormat("q8_0", 32, 34),
    "q4_k": BlockFormat("q4_k", 256, 144),
    "q6_k": BlockFormat("q6_k", 256, 210),
}
# GGML's type numbers (gguf.GGMLQuantizationType) for the formats above.
GGML_TYPES = {8: "q8_0", 12: "q4_k", 14: "q6_k"}


def block_format(quant: str) -> BlockFormat:
    try:
        return FORMATS[quant.lower()]
    except KeyError:
        raise ValueError(f"no quantized matmul for {quant!r}; supported: {', '.join(FORMATS)}") from None


def check_weight_shape(w_shape: tuple[int, ...], k: int, fmt: BlockFormat) -> None:
    if k % fmt.values:
        raise ValueError(f"{fmt.name} weights need K a multiple of {fmt.values}, got {k}")
    expected = k // fmt.values * fmt.bytes
    if len(w_shape) != 2 or w_shape[1] != expected:
        raise ValueError(f"{fmt.name} weights for K={k} are (rows, {expected}) bytes, got {tuple(w_shape)}")


def _header_constant(header: str, name: str) -> int:
    match = re.search(rf"constant constexpr int {name} = (\d+);", header)
    if not match:
        raise ValueError(f"quant_matmul.metal's header lost its {name} constant")
    return int(match.group(1))


class QuantMatmulKernels:
    """The Metal kernels of quant_matmul.metal, built with `factory` (a callable with
    `mx.fast.metal_kernel`'s signature)."""

    def __init__(self, factory, source: MetalSource | None = None):
        source = source or metal_source.load(SOURCE_FILE)
        self.rows_per_simdgroup = _header_constant(source.header, "ROWS")
        self.simdgroups = _header_constant(source.header, "SIMDGROUPS")
        self.kernels = {
            quant: factory(name=f"quant_matmul_{quant}", input_names=["w", "x"], output_names=["y"],
                           source=source.kernels[fmt.name], header=source.header)
            for quant, fmt in FORMATS.items()
        }

    def __call__(self, x, w, quant: str):
        """y = x @ W.T for x of shape (M, K), M <= MAX_ROWS; y has x's dtype."""
        fmt = block_format(quant)
        m, k = x.shape
        if not 1 <= m <= MAX_ROWS:
            raise ValueError(f"the quantized matmul kernel takes 1..{MAX_ROWS} rows, got {m}")
        check_weight_shape(tuple(w.shape), k, fmt)
        n = w.shape[0]
        simdgroups_needed = -(-n // self.rows_per_simdgroup)
        (y,) = self.kernels[fmt.name](
            inputs=[w, x],
            output_shapes=[(m, n)],
            output_dtypes=[x.dtype],
            # One SIMD group per ROWS rows; the last threadgroup may be partial.
            grid=(simdgroups_needed * 32, 1, 1),
            threadgroup=(32 * self.simdgroups, 1, 1),
            template=[("M", m)],
        )
        return y


@functools.cache
def metal_kernels() -> QuantMatmulKernels | None:
    """The kernels on this machine's Metal device, or None without Metal."""
    import mlx.core as mx

    if not mx.metal.is_available():
        return None
    return QuantMatmulKernels(mx.fast.metal_kernel)


# ---------------------------------------------------------------------------------------
# Reference: llama.cpp's dequantization in MLX operations.
def _f16_at(blocks, offset: int):
    """The float16 stored little-endian at byte `offset` of each block, as float32."""
    import mlx.core as mx

    lo = blocks[:, offset].astype(mx.uint16)
    hi = blocks[:, offset + 1].astype(mx.uint16)
    return (lo | (hi << 8)).view(mx.float16).astype(mx.float32)


def _dequantize_q8_0(blocks):
    import mlx.core as mx

    d = _f16_at(blocks, 0)
    q = blocks[:, 2:].view(mx.int8).astype(mx.float32)
    return d[:, None] * q


def _dequantize_q4_k(blocks):
    import mlx.core as mx

    d = _f16_at(blocks, 0)
    dmin = _f16_at(blocks, 2)
    s = blocks[:, 4:16]
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = mx.concatenate([s0 & 63, (s2 & 0xF) | ((s0 >> 6) << 4)], axis=1).astype(mx.float32)
    m = mx.concatenate([s1 & 63, (s2 >> 4) | ((s1 >> 6) << 4)], axis=1).astype(mx.float32)
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32)
    q = mx.concatenate([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32).astype(mx.float32)
    return ((d[:, None] * sc)[:, :, None] * q - (dmin[:, None] * m)[:, :, None]).reshape(-1, 256)


def _dequantize_q6_k(blocks):
    import mlx.core as mx

    ql = blocks[:, 0:128].reshape(-1, 2, 1, 64)
    qh = blocks[:, 128:192].reshape(-1, 2, 1, 32)
    scales = blocks[:, 192:208].view(mx.int8).astype(mx.float32)
    d = _f16_at(blocks, 208)
    low = mx.concatenate([ql[..., :32] & 0xF, ql[..., 32:] & 0xF, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=2)
    high = mx.concatenate([(qh >> (2 * k)) & 3 for k in range(4)], axis=2)
    q = ((low | (high << 4)).astype(mx.int32) - 32).astype(mx.float32).reshape(-1, 16, 16)
    return ((d[:, None] * scales)[:, :, None] * q).reshape(-1, 256)


_DEQUANTIZERS = {"q8_0": _dequantize_q8_0, "q4_k": _dequantize_q4_k, "q6_k": _dequantize_q6_k}


def dequantize(w, quant: str, k: int):
    """The float32 (rows, K) matrix that GGUF blocks `w` (uint8, (rows, bytes)) hold."""
    import mlx.core as mx

    fmt = block_format(quant)
    w = mx.array(w) if not isinstance(w, mx.array) else w
    check_weight_shape(tuple(w.shape), k, fmt)
    blocks = w.reshape(-1, fmt.bytes)
    return _DEQUANTIZERS[fmt.name](blocks).reshape(w.shape[0], k)


def reference_matmul(x, w, quant: str):
    """x @ W.T in float32 MLX operations, cast to x's dtype; x is (..., K)."""
    import mlx.core as mx

    weights = dequantize(w, quant, x.shape[-1])
    return (x.astype(mx.float32) @ weights.T).astype(x.dtype)


def quant_matmul(x, w, quant: str, kernels: QuantMatmulKernels | None = None):
    """x @ W.T for GGUF-blocked W: the kernel for up to MAX_ROWS rows where one is at
    hand (Metal, or `kernels` given), else the reference. x is (..., K)."""
    kernels = kernels or metal_kernels()
    rows = 1
    for dim in x.shape[:-1]:
        rows *= dim
    if kernels is None or not 1 <= rows <= MAX_ROWS:
        return reference_matmul(x, w, quant)
    y = kernels(x.reshape(rows, x.shape[-1]), w, quant)
    return y.reshape(*x.shape[:-1], w.shape[0])
