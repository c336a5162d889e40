"""sdpa_decode.metal (float and int8 KV caches) through the emulator here and real Metal on a
Mac, against float64 attention (bound: see kernel_checks): GQA 1/4/8, head sizes
64/128/256, one to four queries with the causal mask among them, caches longer than the
valid length, batches of two; and the pure-MLX reference and dispatcher."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.kernels.kernel_checks import KERNEL_TARGETS, assert_within, exact_attention, factory_for, to_numpy

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


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_int8_cache(target, case):
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import dequantize_kv, quantize_kv, reference_attention

    q, k, v, kv_len, scale = make_case(case, "float16", seed=1)
    (kq, ks), (vq, vs) = quantize_kv(k), quantize_kv(v)
    assert kq.dtype == mx.int8 and ks.dtype == mx.float16 and ks.shape == (*k.shape[:-1], k.shape[-1] // 32)
    exact, bound = exact_attention(to_numpy(q), to_numpy(dequantize_kv(kq, ks)), to_numpy(dequantize_kv(vq, vs)), kv_len, scale)
    out = kernels_for(target)(q, kq, vq, kv_len, scale, ks, vs)
    assert_within(to_numpy(out), exact, bound, "float16", "kernel")
    ref = reference_attention(q, kq, vq, kv_len, scale, ks, vs)
    assert_within(to_numpy(ref), exact, bound, "float16", "reference")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_other_dtypes(target, dtype):
    q, k, v, kv_len, scale = make_case(CASES[1], dtype, seed=2)
    exact, bound = exact_attention(to_numpy(q), to_numpy(k), to_numpy(v), kv_len, scale)
    out = kernels_for(target)(q, k, v, kv_len, scale)
    assert out.dtype == q.dtype
    assert_within(to_numpy(out), exact, bound, dtype, f"{dtype} kernel")


def test_quantize_kv_error_is_half_a_step():
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import dequantize_kv, quantize_kv

    x = mx.array(np.random.default_rng(4).standard_normal((2, 3, 5, 64)).astype(np.float32))
    x = x.at[0, 0, 0, :32].multiply(0.0)  # an all-zero group
    values, scales = quantize_kv(x)
    err = np.abs(np.array(dequantize_kv(values, scales)) - np.array(x)).reshape(2, 3, 5, 2, 32)
    step = np.array(scales.astype(mx.float32))[..., None]
    assert np.all(err <= step / 2 + 1e-7 + 1e-3 * step)  # scales are float16-rounded
    assert np.all(np.array(dequantize_kv(values, scales))[0, 0, 0, :32] == 0)


@pytest.mark.parametrize("kv", ["float16", "int8"])
def test_dispatcher_without_metal_runs_mlx_sdpa(kv):
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import decode_attention, dequantize_kv, metal_kernels, quantize_kv

    if mx.metal.is_available():
        pytest.skip("this machine has Metal")
    assert metal_kernels() is None
    q, k, v, kv_len, scale = make_case(CASES[3], "float32", seed=3)
    extra = ()
    if kv == "int8":
        (k, ks), (v, vs) = quantize_kv(k), quantize_kv(v)
        extra = (ks, vs)
        kd, vd = dequantize_kv(k, ks), dequantize_kv(v, vs)
    else:
        kd, vd = k, v
    exact, bound = exact_attention(to_numpy(q), to_numpy(kd), to_numpy(vd), kv_len, scale)
    out = decode_attention(q, k, v, kv_len, scale, *extra)
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
    with pytest.raises(ValueError, match="head sizes"):
        kernels(mx.zeros((1, 4, 1, 96), dtype=mx.float16), mx.zeros((1, 4, 10, 96), dtype=mx.float16),
                mx.zeros((1, 4, 10, 96), dtype=mx.float16), 5, 0.1)
