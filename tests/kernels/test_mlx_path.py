"""The MLX path wired to the Metal kernels: on a Mac with real Metal (marker `metal`), and
here with the emulator standing in for the GPU: `metal_kernels()` of both ops hands out
emulator-built kernels, so the loader keeps Q4_K/Q6_K/Q8_0 tensors in GGUF block layout
and the 8-bit KV cache is attended by the kernel, as on a Mac. Logits are held to the MLX path's own
tolerances against the float64 numpy reference (tests/models): 1e-5 x the largest |logit|
with a float32 cache, 2e-2 with the 8-bit one (where the kernel must also match the
non-kernel 8-bit path closely: both read the same quantized cache)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import models_dir, require_model
from tests.kernels.kernel_checks import KERNEL_TARGETS, emulator_factory, metal_factory

PROMPT = [1, 403, 47, 290, 11, 88, 402, 7, 301, 35]


@pytest.fixture(scope="module")
def test_models(tmp_path_factory):
    require_model("stories260K/stories260K.gguf")  # the test models' vocabulary
    folder = tmp_path_factory.mktemp("kernel-mlx-models")

    def build(shape: str, quant: str):
        from tests.models.builders import build as build_gguf

        return build_gguf(shape, quant, folder, models_dir())

    return build


@pytest.fixture(params=KERNEL_TARGETS)
def emulated_metal(request, monkeypatch):
    from localllm.metal_kernels import quant_matmul, sdpa_decode

    if request.param == "metal":
        metal_factory()  # skips without Metal
        assert quant_matmul.metal_kernels() is not None and sdpa_decode.metal_kernels() is not None
        return
    factory = emulator_factory()
    matmul, attention = quant_matmul.QuantMatmulKernels(factory), sdpa_decode.DecodeAttentionKernels(factory)
    monkeypatch.setattr(quant_matmul, "metal_kernels", lambda: matmul)
    monkeypatch.setattr(sdpa_decode, "metal_kernels", lambda: attention)


def logits(model, tokens, kv_type: str, chunk: int):
    import mlx.core as mx

    cache = model.make_cache(kv_type)
    rows = [np.array(model(mx.array([tokens[lo:lo + chunk]]), cache, all_logits=True)[0], dtype=np.float64)
            for lo in range(0, len(tokens), chunk)]
    return np.concatenate(rows)


def block_types(weights) -> set[str]:
    from localllm.models.weights import BlockWeight

    return {w.quant for w in weights.tensors.values() if isinstance(w, BlockWeight)}


@pytest.mark.parametrize("shape, quant, kinds", [
    ("llama-gqa4", "Q4_K_M", {"q4_k", "q6_k"}),  # head size 32, tied output
    ("qwen3", "Q8_0", {"q8_0"}),                 # head size 128, GQA 4
])
def test_block_weights_through_the_kernels_match_the_reference(test_models, emulated_metal, shape, quant, kinds):
    from localllm.models.architectures import load_gguf_model
    from tests.models.numpy_reference import ReferenceModel

    path = test_models(shape, quant)
    model, weights = load_gguf_model(path)
    assert block_types(weights) == kinds  # nothing repacked
    ref = ReferenceModel(path).logits(PROMPT)
    got = logits(model, PROMPT, "f32", chunk=4)  # prefill chunks of 4 rows, then decode-sized
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_8bit_kv_cache_through_the_attention_kernel(test_models, emulated_metal, monkeypatch):
    from localllm.metal_kernels import sdpa_decode
    from localllm.models.architectures import load_gguf_model
    from tests.models.numpy_reference import ReferenceModel

    path = test_models("qwen3", "Q8_0")
    model, _ = load_gguf_model(path)
    calls = []
    kernels = sdpa_decode.metal_kernels()

    def counted():
        calls.append(1)
        return kernels

    monkeypatch.setattr(sdpa_decode, "metal_kernels", counted)
    got = logits(model, PROMPT, "q8_0", chunk=3)
    assert calls, "the 8-bit cache never reached the attention kernel"
    monkeypatch.setattr(sdpa_decode, "metal_kernels", lambda: None)  # MLX's quantized_matmul path
    plain = logits(model, PROMPT, "q8_0", chunk=3)
    ref = ReferenceModel(path).logits(PROMPT)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() <= 2e-2 * scale
    assert np.abs(got - plain).max() <= 1e-4 * scale


def test_without_metal_the_loader_repacks():
    import mlx.core as mx

    from localllm.models.gguf_loader import blocks_by_default

    if mx.metal.is_available():
        pytest.skip("this machine has Metal")
    assert blocks_by_default() is False
