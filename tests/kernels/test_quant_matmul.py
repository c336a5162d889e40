"""quant_matmul.metal (Q8_0, Q4_K, Q6_K blocks) through the emulator here and real Metal on
a Mac, against a float64 product on the gguf package's dequantization (bound: see
kernel_checks), and the pure-MLX reference and dispatcher against the same."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tests.conftest import require_model
from tests.kernels.kernel_checks import (
    KERNEL_TARGETS, assert_within, factory_for, gguf_weights, matmul_error_bound, random_blocks, to_numpy,
)

# K: 7 Q8_0 blocks (14 units: lanes left idle); 3 superblocks (48 units: uneven lanes).
K_FOR = {"q8_0": 224, "q4_k": 768, "q6_k": 768}
ROWS = 37  # 18.5 SIMD groups of 2 rows: a tail row and a partial last threadgroup


@functools.cache
def kernels_for(target: str):
    from localllm.metal_kernels.quant_matmul import QuantMatmulKernels

    return QuantMatmulKernels(factory_for(target))


def check(kernels, w_bytes: np.ndarray, x: np.ndarray, quant: str, dtype: str, what: str):
    import mlx.core as mx

    from localllm.metal_kernels.quant_matmul import reference_matmul

    x_mx = mx.array(x).astype(getattr(mx, dtype))
    x64 = to_numpy(x_mx).astype(np.float64)  # exactly the values the kernel reads
    exact = x64 @ gguf_weights(w_bytes, quant).T
    bound = matmul_error_bound(x64, w_bytes, quant, dtype)
    y = kernels(x_mx, mx.array(w_bytes), quant)
    assert y.dtype == x_mx.dtype and y.shape == exact.shape
    assert_within(to_numpy(y), exact, bound, dtype, f"{what} kernel")
    assert_within(to_numpy(reference_matmul(x_mx, mx.array(w_bytes), quant)), exact, bound, dtype, f"{what} reference")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("quant", ["q8_0", "q4_k", "q6_k"])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_random_blocks_float32(target, quant, m):
    rng = np.random.default_rng(hash((quant, m)) % 2**32)
    w = random_blocks(rng, quant, ROWS, K_FOR[quant])
    x = rng.standard_normal((m, K_FOR[quant])).astype(np.float32)
    check(kernels_for(target), w, x, quant, "float32", f"{quant} M={m}")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("quant", ["q8_0", "q4_k", "q6_k"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_random_blocks_half_activations(target, quant, dtype):
    rng = np.random.default_rng(7)
    w = random_blocks(rng, quant, 9, K_FOR[quant])
    x = rng.standard_normal((3, K_FOR[quant])).astype(np.float32)
    check(kernels_for(target), w, x, quant, dtype, f"{quant} {dtype}")


@pytest.fixture(scope="module")
def smollm2_embeddings() -> np.ndarray:
    """SmolLM2's token embedding: its one Q8_0 tensor (49152 x 576), tied to the output."""
    import gguf

    reader = gguf.GGUFReader(str(require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")))
    (tensor,) = [t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0]
    assert tensor.name == "token_embd.weight"
    return np.asarray(tensor.data)


@pytest.fixture(scope="module")
def kquant_tensors(kquant_model) -> dict[str, np.ndarray]:
    """The Q4_K and Q6_K tensors of the tiny model llama.cpp's quantizer builds (Q4_K_M)."""
    import gguf

    reader = gguf.GGUFReader(str(kquant_model))
    return {t.name: (np.asarray(t.data), t.tensor_type.name.lower()) for t in reader.tensors
            if t.tensor_type.name in ("Q4_K", "Q6_K")}


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("m", [1, 4])
def test_smollm2_q8_0_embedding_rows(target, m, smollm2_embeddings):
    rows = smollm2_embeddings[:1001]  # the output projection's first 1001 logits
    x = np.random.default_rng(m).standard_normal((m, 576)).astype(np.float32)
    check(kernels_for(target), rows, x, "q8_0", "float32", "SmolLM2 token_embd")


@pytest.mark.parametrize("target", KERNEL_TARGETS)
@pytest.mark.parametrize("name, quant, rows", [
    ("blk.0.ffn_down.weight", "q4_k", None),   # K = 512
    ("blk.0.attn_k.weight", "q4_k", None),
    ("token_embd.weight", "q4_k", 301),
    ("blk.1.ffn_down.weight", "q6_k", None),   # K = 512
    ("blk.1.attn_v.weight", "q6_k", None),
    ("output.weight", "q6_k", 301),
])
def test_llama_cpp_quantized_tensors(target, name, quant, rows, kquant_tensors):
    data, stored = kquant_tensors[name]
    assert stored == quant
    w = data[:rows] if rows else data
    k = w.shape[1] // {"q4_k": 144, "q6_k": 210}[quant] * 256
    x = np.random.default_rng(3).standard_normal((4, k)).astype(np.float16)
    check(kernels_for(target), w, x, quant, "float16", name)


@pytest.mark.slow
@pytest.mark.parametrize("target", KERNEL_TARGETS)
def test_smollm2_full_output_projection(target, smollm2_embeddings):
    x = np.random.default_rng(0).standard_normal((1, 576)).astype(np.float32)
    check(kernels_for(target), smollm2_embeddings, x, "q8_0", "float32", "SmolLM2 lm head")


def test_dispatcher_uses_the_kernel_up_to_16_rows_and_the_reference_beyond():
    import mlx.core as mx

    from localllm.metal_kernels.quant_matmul import MAX_ROWS, quant_matmul, reference_matmul

    calls = []

    class Recording:
        def __call__(self, x, w, quant):
            calls.append(x.shape)
            return kernels_for("emulator")(x, w, quant)

    rng = np.random.default_rng(5)
    w = mx.array(random_blocks(rng, "q4_k", 6, 256))
    small = mx.array(rng.standard_normal((2, 3, 256)).astype(np.float32))
    y = quant_matmul(small, w, "q4_k", kernels=Recording())
    assert calls == [(6, 256)] and y.shape == (2, 3, 6)
    np.testing.assert_allclose(np.array(y), np.array(reference_matmul(small, w, "q4_k")), rtol=1e-5, atol=1e-5)
    big = mx.array(rng.standard_normal((MAX_ROWS + 1, 256)).astype(np.float32))
    assert quant_matmul(big, w, "q4_k", kernels=Recording()).shape == (MAX_ROWS + 1, 6)
    assert calls == [(6, 256)]  # more than 16 rows: the reference


def test_dispatcher_without_metal_runs_the_reference():
    import mlx.core as mx

    from localllm.metal_kernels.quant_matmul import metal_kernels, quant_matmul, reference_matmul

    if mx.metal.is_available():
        pytest.skip("this machine has Metal")
    assert metal_kernels() is None
    rng = np.random.default_rng(6)
    w = mx.array(random_blocks(rng, "q6_k", 4, 512))
    x = mx.array(rng.standard_normal((1, 512)).astype(np.float32))
    np.testing.assert_array_equal(np.array(quant_matmul(x, w, "q6_k")), np.array(reference_matmul(x, w, "q6_k")))


def test_shapes_that_do_not_fit_are_refused():
    import mlx.core as mx

    from localllm.metal_kernels.quant_matmul import dequantize

    kernels = kernels_for("emulator")
    w = mx.zeros((4, 144), dtype=mx.uint8)
    with pytest.raises(ValueError, match="K a multiple of 256"):
        kernels(mx.zeros((1, 100)), w, "q4_k")
    with pytest.raises(ValueError, match=r"\(rows, 288\) bytes"):
        kernels(mx.zeros((1, 512)), w, "q4_k")
    with pytest.raises(ValueError, match="1..16 rows"):
        kernels(mx.zeros((17, 256)), w, "q4_k")
    with pytest.raises(ValueError, match="no quantized matmul for 'q5_k'"):
        dequantize(w, "q5_k", 256)
