"""sdpa_decode.metal (float and 8-bit affine KV caches) through the emulator here and real Metal on a
Mac, against float64 attention (bound: see kernel_checks): GQA 1/4/8, head sizes
64/128/256, one to four queries with the causal mask among them, caches longer than the
valid length, batches of two; and the pure-MLX reference and dispatcher."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.kernels.kernel_checks import (
    KERNEL_TARGETS, affine8_float64, assert_within, exact_attention, factory_for, to_numpy,
)

# (batch, q heads, kv heads, queries, kv_len, cache capacity, head size)
CASES = [
    (1, 4, 4, 1, 37, 40, 64),      # GQA 1, one query
    (1, 8, 2, 3, 70, 96, 128),     # GQA 4, three queries (speculative verification)
    (1, 8, 1, 4, 19, 19, 256),     # GQA 8, the cache exactly full
    (2, 4, 1, 2, 33, 48, 64),      # two sequences, GQA 4
    (1, 16, 2, 1, 300, 320, 128),  # GQA 8, a longer context
]


@functools.cache
def kernels_for(target: str):
    from localllm.metal_kernels.sdpa_decode import DecodeAttentionKernels

    return DecodeAttentionKernels(factory_for(target))


def make_case(case, dtype: str, seed: int = 0):
    import mlx.core as mx

    b, hq, hkv, n_queries, kv_len, cap, d = case
    rng = np.random.default_rng(seed + d + kv_len)
    q = mx.array(rng.standard_normal((b, hq, n_queries, d)).astype(np.float32) * 1.5).astype(getattr(mx, dtype))
    k = mx.array(rng.standard_normal((b, hkv, cap, d)).astype(np.float32)).astype(getattr(mx, dtype))
    v = mx.array(rng.standard_normal((b, hkv, cap, d)).astype(np.float32)).astype(getattr(mx, dtype))
    return q, k, v, kv_len, d ** -0.5


def case_id(case):
    b, hq, hkv, n_queries, kv_len, _, d = case
    return f"B{b}-GQA{hq // hkv}-L{n_queries}-S{kv_len}-D{d}"


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float16_cache(target, case):
    from localllm.metal_kernels.sdpa_decode import reference_attention

    q, k, v, kv_len, scale = make_case(case, "float16")
    exact, bound = exact_attention(to_numpy(q), to_numpy(k), to_numpy(v), kv_len, scale)
    out = kernels_for(target)(q, k, v, kv_len, scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    assert_within(to_numpy(out), exact, bound, "float16", "kernel")
    assert_within(to_numpy(reference_attention(q, k, v, kv_len, scale)), exact, bound, "float16", "reference")


def quantize8(x):
    """An 8-bit cache part as MLX's QuantizedKVCache stores it (group 32)."""
    import mlx.core as mx

    return mx.quantize(x, group_size=32, bits=8)


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_8bit_cache(target, case):
    from localllm.metal_kernels.sdpa_decode import reference_attention

    q, k, v, kv_len, scale = make_case(case, "float16", seed=1)
    keys, values = quantize8(k), quantize8(v)
    (k64, k_mag), (v64, v_mag) = affine8_float64(keys), affine8_float64(values)
    exact, bound = exact_attention(to_numpy(q), k64, v64, kv_len, scale, k_mag, v_mag)
    out = kernels_for(target)(q, keys, values, kv_len, scale)
    assert_within(to_numpy(out), exact, bound, "float16", "kernel")
    ref = reference_attention(q, keys, values, kv_len, scale)
    assert_within(to_numpy(ref), exact, bound, "float16", "reference")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_other_dtypes(target, dtype):
    q, k, v, kv_len, scale = make_case(CASES[1], dtype, seed=2)
    exact, bound = exact_attention(to_numpy(q), to_numpy(k), to_numpy(v), kv_len, scale)
    out = kernels_for(target)(q, k, v, kv_len, scale)
    assert out.dtype == q.dtype
    assert_within(to_numpy(out), exact, bound, dtype, f"{dtype} kernel")


@pytest.mark.parametrize("kv", ["float16", "8bit"])
def test_dispatcher_without_metal_runs_mlx_sdpa(kv):
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import decode_attention, metal_kernels

    if mx.metal.is_available():
        pytest.skip("this machine has Metal")
    assert metal_kernels() is None
    q, k, v, kv_len, scale = make_case(CASES[3], "float32", seed=3)
    if kv == "8bit":
        k, v = quantize8(k), quantize8(v)
        (k64, k_mag), (v64, v_mag) = affine8_float64(k), affine8_float64(v)
        exact, bound = exact_attention(to_numpy(q), k64, v64, kv_len, scale, k_mag, v_mag)
    else:
        exact, bound = exact_attention(to_numpy(q), to_numpy(k), to_numpy(v), kv_len, scale)
    out = decode_attention(q, k, v, kv_len, scale)
    assert_within(to_numpy(out), exact, bound * 64, "float32", "MLX sdpa")  # its own summation order


def test_dispatcher_uses_given_kernels():
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import decode_attention

    q, k, v, kv_len, scale = make_case(CASES[0], "float16")
    out = decode_attention(q, k, v, kv_len, scale, kernels=kernels_for("emulator"))
    exact, bound = exact_attention(to_numpy(q), to_numpy(k), to_numpy(v), kv_len, scale)
    assert_within(to_numpy(out), exact, bound, "float16", "dispatched kernel")
    assert isinstance(out, mx.array)


def test_bad_shapes_are_refused():
    import mlx.core as mx

    kernels = kernels_for("emulator")
    q = mx.zeros((1, 6, 1, 64), dtype=mx.float16)
    k = mx.zeros((1, 4, 10, 64), dtype=mx.float16)
    with pytest.raises(ValueError, match="do not share 4 KV heads"):
        kernels(q, k, k, 5, 0.1)
    with pytest.raises(ValueError, match="kv_len 11 must cover"):
        kernels(mx.zeros((1, 4, 1, 64), dtype=mx.float16), k, k, 11, 0.1)
    with pytest.raises(ValueError, match="do not group a head"):
        packed, scales, biases = quantize8(k)
        three = mx.concatenate([scales, scales[..., :1]], axis=-1)  # 64 values in 3 groups
        kernels(mx.zeros((1, 4, 1, 64), dtype=mx.float16), (packed, three, biases), (packed, scales, biases), 5, 0.1)
    with pytest.raises(ValueError, match="multiples of 32 up to 256"):
        kernels(mx.zeros((1, 4, 1, 80), dtype=mx.float16), mx.zeros((1, 4, 10, 80), dtype=mx.float16),
                mx.zeros((1, 4, 10, 80), dtype=mx.float16), 5, 0.1)
