"""GGUF tensor blocks into MLX weights, one ggml type at a time.

Exact repacks (the MLX weight dequantizes bit for bit to what `gguf`'s dequantizer gives):
- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: one block of 32 is one MLX group of 32 with the same
  integers; scale = d, bias = m or -offset*d (float16 holds both exactly; float32 only
  when a bias would overflow float16).
- Q4_K, Q5_K: each 32-element sub-block is one group; scale = d*sc, bias = -dmin*m,
  in float32 (a float16 holds only 6-17% of those products exactly).
- Q6_K: its 16-element sub-blocks are below MLX's smallest group (32), so the tensor is
  held as two 6-bit group-32 matrices, each carrying one of the two sub-blocks of every
  group and the zero point (q=32) in the other; their sum is the tensor, exactly.
Kept as they are (`keep_blocks`, the default on Metal): Q4_K, Q6_K and Q8_0 matrices stay
GGUF blocks in a `BlockWeight`, which localllm.metal_kernels' kernels read directly.
Converted, not exact:
- Q2_K, Q3_K: dequantized, then requantized to 4-bit affine groups of 32 with float32
  scale = (max-min)/15 and bias = min of the group, rounding to nearest: every weight is
  within half a step, (max-min)/30 of its group, of the GGUF value (tested).

Work goes row chunk by row chunk so the transient numpy arrays stay small, and each chunk
of the source is handed back (`rows_done`) as soon as it is read, so a loader reading from a
memory map can drop those pages before the next chunk (a large embedding never has its
file bytes and its repacked copy resident at once).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import mlx.core as mx
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from localllm.models.weights import AffineWeight, BlockWeight, DenseWeight, SummedWeight, Weight

GROUP = 32
QK_K = 256
# Weights handled per chunk: bounds the numpy temporaries to a few MB.
CHUNK_WEIGHTS = 1 << 17
# The converted (inexact) types and the bits they are requantized to.
CONVERTED_BITS = {T.Q2_K: 4, T.Q3_K: 4}


# Called with (lo, hi) once source rows lo..hi-1 are read and never needed again.
RowsDone = Callable[[int, int], None]


def _ignore(lo: int, hi: int) -> None:
    pass


class UnsupportedTensorType(ValueError):
    """A ggml type the MLX path cannot hold."""


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers q[rows, n] (each < 2**bits, n a multiple of 32) the way MLX does:
    a little-endian bit stream per row, read as uint32 words."""
    rows, n = q.shape
    eight = q.reshape(rows, n // 8, 8).astype(np.uint64)
    stream = eight[..., 0].copy()
    for j in range(1, 8):
        stream |= eight[..., j] << np.uint64(j * bits)
    # 8 values of `bits` bits are exactly `bits` bytes.
    out = np.empty((rows, n // 8, bits), dtype=np.uint8)
    for k in range(bits):
        out[..., k] = (stream >> np.uint64(8 * k)) & np.uint64(0xFF)
    return out.reshape(rows, n * bits // 8).view(np.uint32)


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte `start` of every block, as float32 [n_blocks, 1]."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return qs & np.uint8(0x0F), qs >> np.uint8(4)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: 4 bytes of high bits -> [n_blocks, 32] of 0/1."""
    word = qh.copy().view(np.uint32)  # [n, 1]
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


# -- per-type block decoders: blocks [n_blocks, type_size] -> (q [n, block], scale, bias)
# scale and bias are per group of 32: [n_blocks, block / 32].


def _q4_0(b):
    lo, hi = _nibbles(b[:, 2:18])
    d = _f16(b, 0)
    return np.concatenate([lo, hi], 1), d, -8 * d


def _q4_1(b):
    lo, hi = _nibbles(b[:, 4:20])
    return np.concatenate([lo, hi], 1), _f16(b, 0), _f16(b, 2)


def _q5_0(b):
    lo, hi = _nibbles(b[:, 6:22])
    q = np.concatenate([lo, hi], 1) | (_high_bits(b[:, 2:6]) << np.uint8(4))
    d = _f16(b, 0)
    return q, d, -16 * d


def _q5_1(b):
    lo, hi = _nibbles(b[:, 8:24])
    q = np.concatenate([lo, hi], 1) | (_high_bits(b[:, 4:8]) << np.uint8(4))
    return q, _f16(b, 0), _f16(b, 2)


def _q8_0(b):
    q = (b[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    d = _f16(b, 0)
    return q, d, -128 * d


def _kquant_scales(b):
    """Q4_K/Q5_K: per 32-element sub-block scale d*sc and bias -dmin*m, float32 [n, 8]."""
    sc, m = gguf_quants.Q4_K.get_scale_min(b[:, 4:16])
    return _f16(b, 0) * sc.astype(np.float32), -(_f16(b, 2) * m.astype(np.float32))


def _q4_k(b):
    n = b.shape[0]
    lo, hi = _nibbles(b[:, 16:144].reshape(n, 4, 32))
    q = np.stack([lo, hi], 2).reshape(n, QK_K)  # chunk c: sub-block 2c low, 2c+1 high nibbles
    return (q, *_kquant_scales(b))


def _q5_k(b):
    n = b.shape[0]
    lo, hi = _nibbles(b[:, 48:176].reshape(n, 4, 32))
    low = np.stack([lo, hi], 2).reshape(n, 8, 32)
    qh = b[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)  # sub-block j: bit j
    q = (low | ((qh & np.uint8(1)) << np.uint8(4))).reshape(n, QK_K)
    return (q, *_kquant_scales(b))


def _q6_k_parts(b):
    """Q6_K: q [n, 256] in 0..63 (zero at 32) and the scale of each 16-element sub-block."""
    n = b.shape[0]
    ql = b[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & np.uint8(0x0F)).reshape(n, 8, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    qh = (qh & np.uint8(3)).reshape(n, 8, 32)
    q = (ql | (qh << np.uint8(4))).reshape(n, QK_K)
    scale16 = _f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)  # [n, 16]
    return q, scale16


DECODERS = {
    T.Q4_0: (_q4_0, 4, np.float16),
    T.Q4_1: (_q4_1, 4, np.float16),
    T.Q5_0: (_q5_0, 5, np.float16),
    T.Q5_1: (_q5_1, 5, np.float16),
    T.Q8_0: (_q8_0, 8, np.float16),
    T.Q4_K: (_q4_k, 4, np.float32),
    T.Q5_K: (_q5_k, 5, np.float32),
}


def mlx_buffer(shape: tuple[int, ...], dtype) -> tuple[mx.array, np.ndarray]:
    """A new MLX array and a writable numpy view of its memory, to fill chunk by chunk
    without a second full-size copy (np.empty's pages are not touched by the copy-in)."""
    arr = mx.array(np.empty(shape, dtype=dtype))
    mx.eval(arr)
    view = np.asarray(arr)
    assert view.flags.writeable
    return arr, view


def _row_chunks(rows: int, n: int):
    step = max(1, CHUNK_WEIGHTS // max(n, 1))
    for lo in range(0, rows, step):
        yield lo, min(rows, lo + step)


def _copy_rows(data: np.ndarray, rows_done: RowsDone) -> mx.array:
    """`data` [rows, ...] copied into a new MLX array chunk by chunk."""
    rows = data.shape[0]
    arr, view = mlx_buffer(data.shape, data.dtype)
    for lo, hi in _row_chunks(rows, data[0].size):
        view[lo:hi] = data[lo:hi]
        rows_done(lo, hi)
    return arr


class _Float16Overflow(Exception):
    """A bias does not fit a float16: the tensor is redone with float32 scales."""


def _repack_exact(data: np.ndarray, qtype: T, n: int, rows_done: RowsDone) -> AffineWeight:
    _, _, scale_dtype = DECODERS[qtype]
    try:
        return _fill_affine(data, qtype, n, scale_dtype, rows_done)
    except _Float16Overflow:
        return _fill_affine(data, qtype, n, np.float32, rows_done)


def _fill_affine(data: np.ndarray, qtype: T, n: int, scale_dtype, rows_done: RowsDone) -> AffineWeight:
    """Decode chunk by chunk straight into the MLX buffers of the weight, its scales and
    its biases (no full-size numpy temporaries: they would outlive the tensor in a
    fragmented heap)."""
    decode, bits, _ = DECODERS[qtype]
    _, type_size = gguf_quants.GGML_QUANT_SIZES[qtype]
    rows = data.shape[0]
    w, packed = mlx_buffer((rows, n * bits // 32), np.uint32)
    scales_arr, scales = mlx_buffer((rows, n // GROUP), scale_dtype)
    biases_arr, biases = mlx_buffer((rows, n // GROUP), scale_dtype)
    for lo, hi in _row_chunks(rows, n):
        blocks = np.ascontiguousarray(data[lo:hi]).reshape(-1, type_size)
        q, s, b = decode(blocks)
        rows_done(lo, hi)
        packed[lo:hi] = pack_bits(q.reshape(hi - lo, n), bits)
        s, b = s.astype(scale_dtype, copy=False), b.astype(scale_dtype, copy=False)
        if scale_dtype == np.float16 and not np.isfinite(b).all():
            raise _Float16Overflow
        scales[lo:hi] = s.reshape(hi - lo, -1)
        biases[lo:hi] = b.reshape(hi - lo, -1)
    return AffineWeight(w, scales_arr, biases_arr, bits, GROUP)


def _repack_q6_k(data: np.ndarray, n: int, rows_done: RowsDone) -> SummedWeight:
    """Two 6-bit group-32 matrices: `first` holds sub-block 0 of each group, `second`
    sub-block 1; the other half sits at the zero point (q=32, bias -32*scale)."""
    type_size = gguf_quants.GGML_QUANT_SIZES[T.Q6_K][1]
    rows = data.shape[0]
    def half():  # (packed weight, scales, biases), each an (MLX array, numpy view) pair
        groups = (rows, n // GROUP)
        return mlx_buffer((rows, n * 6 // 32), np.uint32), mlx_buffer(groups, np.float32), mlx_buffer(groups, np.float32)

    halves = [half(), half()]
    for lo, hi in _row_chunks(rows, n):
        q, scale16 = _q6_k_parts(np.ascontiguousarray(data[lo:hi]).reshape(-1, type_size))
        rows_done(lo, hi)
        q = q.reshape(hi - lo, n // GROUP, 2, 16)
        scale16 = scale16.reshape(hi - lo, n // GROUP, 2)
        for half, ((_, packed), (_, scales), (_, biases)) in enumerate(halves):
            mine = np.full_like(q, 32)
            mine[:, :, half] = q[:, :, half]
            packed[lo:hi] = pack_bits(mine.reshape(hi - lo, n), 6)
            scales[lo:hi] = scale16[:, :, half]
            biases[lo:hi] = -32 * scale16[:, :, half]
    return SummedWeight(tuple(AffineWeight(w, s, b, 6, GROUP) for (w, _), (s, _), (b, _) in halves))


def requantize(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest affine quantization of values [rows, n] in groups of 32, float32
    scale = (max-min)/(2**bits-1), bias = min. Returns (packed, scales, biases)."""
    rows, n = values.shape
    g = values.reshape(rows, n // GROUP, GROUP).astype(np.float32)
    low, high = g.min(-1), g.max(-1)
    scale = (high - low) / np.float32(2**bits - 1)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint((g - low[..., None]) / safe[..., None]), 0, 2**bits - 1).astype(np.uint8)
    return pack_bits(q.reshape(rows, n), bits), scale, low


def _repack_converted(data: np.ndarray, qtype: T, n: int, rows_done: RowsDone) -> AffineWeight:
    bits = CONVERTED_BITS[qtype]
    rows = data.shape[0]
    w, packed = mlx_buffer((rows, n * bits // 32), np.uint32)
    scales_arr, scales = mlx_buffer((rows, n // GROUP), np.float32)
    biases_arr, biases = mlx_buffer((rows, n // GROUP), np.float32)
    for lo, hi in _row_chunks(rows, n):
        values = gguf_quants.dequantize(np.ascontiguousarray(data[lo:hi]), qtype).reshape(hi - lo, n)
        rows_done(lo, hi)
        packed[lo:hi], scales[lo:hi], biases[lo:hi] = requantize(values, bits)
    return AffineWeight(w, scales_arr, biases_arr, bits, GROUP)


def _dense(data: np.ndarray, qtype: T, shape: tuple[int, ...], rows_done: RowsDone) -> mx.array:
    if qtype == T.F32:
        values = np.asarray(data, dtype=np.float32)
    elif qtype == T.F16:
        values = np.asarray(data).view(np.float16)
    else:  # BF16: gguf hands it out as raw uint8 bytes; reinterpreted as MLX bfloat16 below
        values = np.asarray(data).view(np.uint16)
    values = values.reshape(shape)
    arr = _copy_rows(values, rows_done) if len(shape) == 2 else mx.array(values)
    return arr.view(mx.bfloat16) if qtype == T.BF16 else arr


SUPPORTED = frozenset([T.F32, T.F16, T.BF16, T.Q6_K, *DECODERS, *CONVERTED_BITS])


# The ggml types the Metal kernels read in block layout (localllm.metal_kernels.quant_matmul).
BLOCK_KERNEL_TYPES = {T.Q4_K: "q4_k", T.Q6_K: "q6_k", T.Q8_0: "q8_0"}


def repack(data: np.ndarray, qtype: T, shape: tuple[int, ...], name: str = "",
           keep_blocks: bool = False, rows_done: RowsDone = _ignore) -> Weight | mx.array:
    """One tensor: `data` as `gguf.GGUFReader` gives it (memory-mapped), `shape` in
    numpy order ([out, in] for a matrix). Vectors come back as plain arrays. With
    `keep_blocks`, Q4_K/Q6_K/Q8_0 matrices stay in block layout (a BlockWeight).
    `rows_done(lo, hi)` is told when a matrix's source rows lo..hi-1 have been read."""
    if qtype not in SUPPORTED:
        raise UnsupportedTensorType(
            f"tensor {name} is {qtype.name}, which the MLX path cannot load "
            f"(it loads {', '.join(sorted(t.name for t in SUPPORTED))}): use --backend llamacpp"
        )
    if qtype in (T.F32, T.F16, T.BF16):
        arr = _dense(data, qtype, shape, rows_done)
        return DenseWeight(arr) if len(shape) == 2 else arr
    if len(shape) != 2 or shape[1] % GROUP:
        raise UnsupportedTensorType(f"tensor {name} ({qtype.name}, shape {shape}) is not a matrix the MLX path can hold")
    rows, n = shape
    data = data.reshape(rows, -1)
    if keep_blocks and qtype in BLOCK_KERNEL_TYPES:
        return BlockWeight(_copy_rows(data, rows_done), BLOCK_KERNEL_TYPES[qtype], n)
    if qtype in DECODERS:
        return _repack_exact(data, qtype, n, rows_done)
    if qtype == T.Q6_K:
        return _repack_q6_k(data, n, rows_done)
    return _repack_converted(data, qtype, n, rows_done)
