"""The Metal emulator on small kernels whose answers are known: a reduction through
threadgroup memory, SIMD-group reductions and shuffles, dispatch geometry with partial
threadgroups, and the errors it must raise instead of computing something wrong."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.kernel_checks import emulator_factory

REDUCE = """
    uint tid = thread_position_in_threadgroup.x;
    uint n = threads_per_threadgroup.x;
    threadgroup float partial[256];
    partial[tid] = inp[thread_position_in_grid.x];
    threadgroup_barrier(mem_flags::mem_threadgroup);
    for (uint stride = 128; stride > 0; stride /= 2) {
        if (tid < stride && tid + stride < n) {
            partial[tid] += partial[tid + stride];
        }
        BARRIER
    }
    if (tid == 0) {
        out[threadgroup_position_in_grid.x] = partial[0];
    }
"""


@pytest.fixture(scope="module")
def emulator():
    emulator_factory()  # skips without a compiler
    from localllm.metal_kernels import emulator

    return emulator


def run_reduce(em, source: str, schedule: str = "forward", fibers: str = "native"):
    x = np.arange(600, dtype=np.float32) % 7 - 3
    kernel = em.MetalEmulator(schedule=schedule, fibers=fibers).metal_kernel("reduce", ["inp"], ["out"], source)
    (out,) = kernel(inputs=[x], output_shapes=[(3,)], output_dtypes=[np.float32], grid=(600, 1, 1),
                    threadgroup=(256, 1, 1))
    expected = np.array([x[:256].sum(), x[256:512].sum(), x[512:].sum()])  # the last group is partial
    return out, expected


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_threadgroup_memory_reduction(emulator, schedule):
    out, expected = run_reduce(emulator, REDUCE.replace("BARRIER", "threadgroup_barrier(mem_flags::mem_threadgroup);"), schedule)
    np.testing.assert_array_equal(out, expected)


def test_ucontext_fibers_give_the_same_answer(emulator):
    out, expected = run_reduce(emulator, REDUCE.replace("BARRIER", "threadgroup_barrier(mem_flags::mem_threadgroup);"),
                               "shuffle", fibers="ucontext")
    np.testing.assert_array_equal(out, expected)


def test_a_missing_barrier_shows_under_some_schedule(emulator):
    results = [run_reduce(emulator, REDUCE.replace("BARRIER", ""), schedule) for schedule in ("forward", "reverse")]
    assert any(not np.array_equal(out, expected) for out, expected in results)


SIMD_OPS = """
    uint i = thread_position_in_grid.x;
    float v = inp[i];
    sums[i] = simd_sum(v);
    maxes[i] = simd_max(v);
    prefix[i] = simd_prefix_exclusive_sum(v);
    lanes[i] = thread_index_in_simdgroup + 100 * simdgroup_index_in_threadgroup;
"""


def test_simd_group_reductions_over_full_and_partial_simd_groups(emulator):
    # Threadgroups of 48 threads: SIMD groups of 32 and 16 lanes; the last threadgroup has 4.
    x = np.random.default_rng(1).integers(-50, 50, 100).astype(np.float32)
    kernel = emulator.metal_kernel("simd_ops", ["inp"], ["sums", "maxes", "prefix", "lanes"], SIMD_OPS)
    sums, maxes, prefix, lanes = kernel(inputs=[x], output_shapes=[(100,)] * 4,
                                        output_dtypes=[np.float32] * 3 + [np.uint32], grid=(100, 1, 1),
                                        threadgroup=(48, 1, 1))
    groups = [(0, 32), (32, 48), (48, 80), (80, 96), (96, 100)]
    for start, stop in groups:
        chunk = x[start:stop]
        np.testing.assert_array_equal(sums[start:stop], chunk.sum())
        np.testing.assert_array_equal(maxes[start:stop], chunk.max())
        np.testing.assert_array_equal(prefix[start:stop], np.concatenate([[0], np.cumsum(chunk)[:-1]]))
    assert list(lanes[32:48]) == [100 + i for i in range(16)]
    assert list(lanes[96:100]) == [0, 1, 2, 3]


SHUFFLES = """
    uint i = thread_position_in_grid.x;
    uint lane = thread_index_in_simdgroup;
    int v = inp[i];
    down[i] = simd_shuffle_down(v, 3);
    up[i] = simd_shuffle_up(v, 2);
    xr[i] = simd_shuffle_xor(v, 5);
    rev[i] = simd_shuffle(v, 31 - lane);
    bcast[i] = simd_broadcast(v, 7);
"""


def test_simd_group_shuffles(emulator):
    x = np.arange(64, dtype=np.int32) * 10
    kernel = emulator.metal_kernel("shuffles", ["inp"], ["down", "up", "xr", "rev", "bcast"], SHUFFLES)
    down, up, xr, rev, bcast = kernel(inputs=[x], output_shapes=[(64,)] * 5, output_dtypes=[np.int32] * 5,
                                      grid=(64, 1, 1), threadgroup=(64, 1, 1))
    lane = np.arange(64) % 32
    base = np.arange(64) - lane
    # shuffle_down leaves the upper `delta` lanes their own value; shuffle_up the lower ones.
    np.testing.assert_array_equal(down, np.where(lane + 3 < 32, x[base + np.minimum(lane + 3, 31)], x))
    np.testing.assert_array_equal(up, np.where(lane >= 2, x[base + np.maximum(lane - 2, 0)], x))
    np.testing.assert_array_equal(xr, x[base + (lane ^ 5)])
    np.testing.assert_array_equal(rev, x[base + 31 - lane])
    np.testing.assert_array_equal(bcast, x[base + 7])


def test_dispatch_geometry_covers_the_grid_once_with_partial_threadgroups(emulator):
    source = """
        uint3 p = thread_position_in_grid;
        uint idx = (p.z * threads_per_grid.y + p.y) * threads_per_grid.x + p.x;
        out[idx] = float(threads_per_threadgroup.x * threads_per_threadgroup.y * threads_per_threadgroup.z);
    """
    kernel = emulator.metal_kernel("geometry", ["dummy"], ["out"], source)
    (out,) = kernel(inputs=[np.zeros(1, np.float32)], output_shapes=[(3, 5, 10)], output_dtypes=[np.float32],
                    grid=(10, 5, 3), threadgroup=(4, 2, 2))
    # threadgroup sizes along x: 4, 4, 2; y: 2, 2, 1; z: 2, 1.
    sx = np.array([4, 4, 4, 4, 4, 4, 4, 4, 2, 2])
    sy = np.array([2, 2, 2, 2, 1])
    sz = np.array([2, 2, 1])
    np.testing.assert_array_equal(out, sz[:, None, None] * sy[None, :, None] * sx[None, None, :])


def test_mlx_arrays_templates_scalars_and_shapes(emulator):
    import mlx.core as mx

    source = """
        uint i = thread_position_in_grid.x;
        T v = a[i];
        out[i] = FLIP ? -(v * N + bias) : (v * N + bias) + float(a_shape[0] + a_ndim + a_strides[0]);
    """
    kernel = emulator.metal_kernel("templated", ["a", "bias"], ["out"], source)
    a = mx.arange(10, dtype=mx.float16)
    (out,) = kernel(inputs=[a, 0.5], output_shapes=[(10,)], output_dtypes=[mx.bfloat16], grid=(10, 1, 1),
                    threadgroup=(32, 1, 1), template=[("T", mx.float16), ("N", 3), ("FLIP", False)])
    assert isinstance(out, mx.array) and out.dtype == mx.bfloat16
    np.testing.assert_array_equal(np.array(out.astype(mx.float32)), np.arange(10) * 3 + 0.5 + 10 + 1 + 1)


def test_generated_signature_is_mlx_s(emulator):
    from localllm.metal_kernels.emulator.kernel_source import InputSpec, translation_unit

    unit, roles, name = translation_unit(
        name="k", header="", source="out[0] = x[0] + x_shape[0] + s; uint t = thread_index_in_simdgroup;",
        inputs=[InputSpec("x", "float16", 2, 64), InputSpec("s", "int32", 0, 1)], output_names=["out"],
        output_dtypes=["float32"], template=[("M", 4)], atomic_outputs=False)
    assert name == "custom_kernel_k_4_float16_t_int32_ts_float"
    assert ("template <int M>\n[[kernel]] void custom_kernel_k_4_float16_t_int32_ts_float(\n"
            "  const device float16_t* x [[buffer(0)]],\n"
            "  const constant int* x_shape [[buffer(1)]],\n"
            "  const constant int32_t& s [[buffer(2)]],\n"
            "  device float* out [[buffer(3)]],\n"
            "  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]]) {\n") in unit
    assert ('template [[host_name("custom_kernel_k_4_float16_t_int32_ts_float")]] [[kernel]] '
            "decltype(custom_kernel_k_4_float16_t_int32_ts_float<4>) custom_kernel_k_4_float16_t_int32_ts_float<4>;") in unit
    assert roles == ["in", "shape", "in", "out", "thread_index_in_simdgroup"]


def test_a_missing_metal_feature_fails_with_the_compiler_message(emulator):
    kernel = emulator.metal_kernel("uses_quad", ["inp"], ["out"], "out[0] = quad_sum(inp[0]);")
    with pytest.raises(emulator.MetalCompileError, match=r"(?s)uses_quad\.body:1.*quad_sum"):
        kernel(inputs=[np.ones(4, np.float32)], output_shapes=[(1,)], output_dtypes=[np.float32], grid=(1, 1, 1),
               threadgroup=(1, 1, 1))


def test_threadgroup_variables_outside_the_body_are_refused(emulator):
    kernel = emulator.metal_kernel("tg_header", ["inp"], ["out"], "out[0] = inp[0];",
                                   header="inline void f() { threadgroup float shared[4]; }\n")
    with pytest.raises(emulator.MetalCompileError, match="only at kernel function scope"):
        kernel(inputs=[np.ones(4, np.float32)], output_shapes=[(1,)], output_dtypes=[np.float32], grid=(1, 1, 1),
               threadgroup=(1, 1, 1))


def run_bad(emulator, source, threadgroup=32, dtype=np.float32):
    kernel = emulator.MetalEmulator(timeout_s=30).metal_kernel("bad", ["inp"], ["out"], source)
    return kernel(inputs=[np.zeros(64, dtype)], output_shapes=[(64,)], output_dtypes=[np.float32],
                  grid=(threadgroup, 1, 1), threadgroup=(threadgroup, 1, 1))


def test_divergent_simd_group_functions_are_an_error(emulator):
    source = """
        uint lane = thread_index_in_simdgroup;
        float v = inp[lane];
        if (lane < 16) { v = simd_sum(v); } else { v = simd_max(v); }
        out[lane] = v;
    """
    with pytest.raises(emulator.MetalRuntimeError, match="divergent SIMD-group functions"):
        run_bad(emulator, source)


def test_threads_at_different_barriers_are_an_error(emulator):
    source = """
        uint t = thread_position_in_threadgroup.x;
        if (t < 40) { threadgroup_barrier(mem_flags::mem_threadgroup); } else { threadgroup_barrier(mem_flags::mem_device); }
        out[t] = 1;
    """
    with pytest.raises(emulator.MetalRuntimeError, match="different barriers"):
        run_bad(emulator, source, threadgroup=64)


def test_a_misaligned_load_is_reported(emulator):
    source = "out[0] = float((*(const device half4*)(inp + 1)).x);"  # half4 needs 8-byte alignment
    with pytest.raises(emulator.MetalRuntimeError, match="misaligned"):
        run_bad(emulator, source, threadgroup=1, dtype=np.float16)


def test_a_crash_is_an_error_not_a_dead_process(emulator):
    source = "out[thread_position_in_grid.x + (1ul << 44)] = 1.0f;"
    with pytest.raises(emulator.MetalRuntimeError, match="signal"):
        run_bad(emulator, source, threadgroup=1)


def test_unwritten_memory_reads_as_nan(emulator):
    source = """
        uint t = thread_position_in_threadgroup.x;
        threadgroup float shared[64];
        if (t == 0) { out[1] = shared[5]; }
    """
    (out,) = run_bad(emulator, source, threadgroup=4)
    assert np.isnan(out[1])  # threadgroup memory never written
    assert np.isnan(out[0])  # an output never written


def test_reading_past_the_end_of_a_buffer_is_an_error(emulator):
    # 64 floats; one row further, as a kernel with an off-by-one row index would read.
    source = "out[0] = inp[thread_position_in_grid.x + 64 + 16];"
    with pytest.raises(emulator.MetalRuntimeError, match="out-of-bounds"):
        run_bad(emulator, source, threadgroup=1)


def test_a_zero_size_threadgroup_array_does_not_compile(emulator):
    source = "threadgroup float shared[N / 64]; shared[0] = 1; out[0] = shared[0];"
    kernel = emulator.metal_kernel("zero_tg", ["inp"], ["out"], source)
    with pytest.raises(emulator.MetalCompileError, match="size zero"):
        kernel(inputs=[np.zeros(4, np.float32)], output_shapes=[(1,)], output_dtypes=[np.float32], grid=(1, 1, 1),
               threadgroup=(1, 1, 1), template=[("N", 32)])
