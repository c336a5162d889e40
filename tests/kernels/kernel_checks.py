"""What the kernel tests share: exact float64 answers, the error bounds they are held to,
random GGUF blocks, and the kernel factories (emulator here, Metal on a Mac).

Error bounds (u = 2^-24, float32's unit roundoff; gamma_n = n u / (1 - n u)):

- Quantized matmul. The weights the kernel dequantizes are llama.cpp's float32 values
  (d * sc is exact in float32; one more rounding, or none where the compiler fuses a
  multiply-add), x is exact in float32 (float16/bfloat16 inputs widen exactly), and the
  K products are summed in float32 in some order. So
      |y - y_exact| <= gamma_(K+3) * sum_k (|w_k| + |min_k|) |x_k|  +  rounding of y,
  where min_k is Q4_K's subtracted minimum (0 for Q6_K/Q8_0) and y's rounding is half
  an ulp of the output type (2^-11 |y| for float16, 2^-8 for bfloat16, u for float32).
- Decode attention. A score s_j = scale * q.k_j is off by at most
  delta = gamma_(D+1) * scale * sum |q||k_j| (+ u |s_j| for the max subtraction); the
  softmax weights then move by a relative 2 delta at most, and the exponentials and
  online-softmax rescalings (at most S of them, exp within 4 ulp in Metal's precise
  mode) add a relative (2S + D + 32) * 8u. With |v| <= V,
      |out - out_exact| <= V * (4 delta + (2S + D + 32) * 8u)  +  rounding of out.
  An 8-bit cache value scale * q + bias costs the kernel one more rounding: the bound
  then uses |scale q| + |bias| for |k| and |v| and adds u max(|scale q| + |bias|).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

U = 2.0 ** -24
OUTPUT_ROUNDING = {"float32": U, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}

BLOCK_VALUES = {"q8_0": 32, "q4_k": 256, "q6_k": 256}
BLOCK_BYTES = {"q8_0": 34, "q4_k": 144, "q6_k": 210}


def gamma(n: int) -> float:
    return n * U / (1 - n * U)


def ggml_type(quant: str):
    import gguf

    return {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_k": gguf.GGMLQuantizationType.Q4_K,
            "q6_k": gguf.GGMLQuantizationType.Q6_K}[quant]


def gguf_weights(w_bytes: np.ndarray, quant: str) -> np.ndarray:
    """The gguf package's own dequantization, as float64 (rows, K)."""
    from gguf import quants

    return quants.dequantize(w_bytes, ggml_type(quant)).astype(np.float64)


def q4k_mins(w_bytes: np.ndarray) -> np.ndarray:
    """|dmin * m| per weight of Q4_K rows: the term the bound must carry for cancellation."""
    from gguf import quants

    rows = w_bytes.shape[0]
    blocks = w_bytes.reshape(-1, 144)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
    _, m = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
    mins = np.abs(dmin * m.reshape(-1, 8).astype(np.float64))
    return np.repeat(mins, 32, axis=1).reshape(rows, -1)


def matmul_error_bound(x64: np.ndarray, w_bytes: np.ndarray, quant: str, out_dtype: str) -> np.ndarray:
    weights = np.abs(gguf_weights(w_bytes, quant))
    if quant == "q4_k":
        weights = weights + q4k_mins(w_bytes)
    k = x64.shape[1]
    exact = x64 @ gguf_weights(w_bytes, quant).T
    return gamma(k + 3) * (np.abs(x64) @ weights.T) + OUTPUT_ROUNDING[out_dtype] * np.abs(exact) + 1e-30


def random_blocks(rng: np.random.Generator, quant: str, rows: int, k: int, scale: float = 1e-2) -> np.ndarray:
    """Random GGUF rows of `quant`: random quant bytes, sane float16 scales."""
    nb = k // BLOCK_VALUES[quant]
    blocks = rng.integers(0, 256, size=(rows, nb, BLOCK_BYTES[quant]), dtype=np.uint8)
    offsets = {"q8_0": (0,), "q4_k": (0, 2), "q6_k": (208,)}[quant]
    for off in offsets:
        values = (rng.uniform(0.5, 2.0, size=(rows, nb)) * scale).astype(np.float16)
        blocks[:, :, off:off + 2] = values.view(np.uint8).reshape(rows, nb, 2)
    return blocks.reshape(rows, nb * BLOCK_BYTES[quant])


def affine8_float64(part) -> tuple[np.ndarray, np.ndarray]:
    """(values, magnitudes |scale q| + |bias|) in float64 of an 8-bit MLX-affine cache part."""
    packed, scales, biases = (np.array(a) for a in part)
    q = packed.view(np.uint8).astype(np.float64)  # MLX packs bytes little-endian
    group = q.shape[-1] // scales.shape[-1]
    s = np.repeat(scales.astype(np.float64), group, axis=-1)
    b = np.repeat(biases.astype(np.float64), group, axis=-1)
    return s * q + b, np.abs(s * q) + np.abs(b)


def exact_attention(q, k, v, kv_len: int, scale: float, k_mag=None, v_mag=None) -> tuple[np.ndarray, np.ndarray]:
    """(float64 attention, its error bound) for q (B, Hq, L, D), cache (B, Hkv, S, D).
    k_mag, v_mag: what bounds the kernel's cache values (default |k|, |v|)."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    k_mag = np.abs(k) if k_mag is None else k_mag
    v_mag = np.abs(v) if v_mag is None else v_mag
    b, hq, n_queries, d = q.shape
    group = hq // k.shape[1]
    keys = np.repeat(k[:, :, :kv_len], group, axis=1)
    values = np.repeat(v[:, :, :kv_len], group, axis=1)
    scores = np.einsum("bhld,bhsd->bhls", q, keys) * scale
    magnitude = np.einsum("bhld,bhsd->bhls", np.abs(q), np.repeat(k_mag[:, :, :kv_len], group, axis=1)) * scale
    visible = np.arange(kv_len)[None, :] <= (kv_len - n_queries + np.arange(n_queries))[:, None]
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = weights @ values
    delta = gamma(d + 2) * np.where(visible, magnitude, 0).max(axis=-1) + U * np.abs(np.where(visible, scores, 0)).max(axis=-1)
    vmax = np.repeat(v_mag[:, :, :kv_len], group, axis=1).max(axis=(-1, -2))[..., None]
    bound = vmax * (4 * delta + (2 * kv_len + d + 32) * 8 * U + U)
    return out, bound[..., None]


def assert_within(actual, exact: np.ndarray, bound, out_dtype: str, what: str) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    bound = np.broadcast_to(bound + OUTPUT_ROUNDING[out_dtype] * np.abs(exact), exact.shape)
    err = np.abs(actual - exact)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite outputs"
    assert np.all(err <= bound), (f"{what}: error {err[worst]:.3g} at {worst} exceeds the bound {bound[worst]:.3g} "
                                  f"(got {actual[worst]!r}, exact {exact[worst]!r})")


def to_numpy(array) -> np.ndarray:
    import mlx.core as mx

    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array)


def metal_factory():
    import mlx.core as mx

    if not mx.metal.is_available():
        pytest.skip("needs Apple Silicon with Metal (mx.metal.is_available() is False on this machine)")
    return mx.fast.metal_kernel


def emulator_factory():
    from localllm.metal_kernels.emulator import compiler, metal_kernel

    try:
        compiler.compiler()
    except compiler.CompilerMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))  # CI must never pass by skipping
        pytest.skip(str(exc))
    return metal_kernel


KERNEL_TARGETS = ["emulator", pytest.param("metal", marks=pytest.mark.metal)]


def factory_for(target: str):
    return metal_factory() if target == "metal" else emulator_factory()
