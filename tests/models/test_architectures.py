"""The MLX architectures against the float64 numpy reference (tests/models/numpy_reference.py)
on test-built models: llama (GQA 1/4/8, tied and untied, Llama 3.1 rope_freqs), qwen2
(q/k/v bias), qwen3 (q/k norm, head size != dim/heads) and gemma3 (sliding window 8 with
global every 6th layer), in F32 and llama.cpp quantizations.

Tolerances (float32 MLX on the CPU, float32 KV cache): every logit within
1e-5 x the largest |logit| of the reference (measured: at most 1.3e-6 x, i.e. 1e-4 on
logits of magnitude 275). Greedy text: equal to the reference's for 32 tokens, except
from a step where the reference's top two logits are within 1e-4 x the largest |logit|
(a near-tie: the comparison stops there; the tokens before it must agree).
The reference itself is checked against llama.cpp on the F32 models (within 1e-3 x the
largest |logit|: llama.cpp keeps an f16 KV cache), so both share llama.cpp's conventions.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from localllm.errors import ModelFileError
from localllm.models.architectures import architecture_module, load_gguf_model
from tests.models.numpy_reference import ReferenceModel

LOGIT_RTOL = 1e-5
NEAR_TIE = 1e-4  # about 100x the largest MLX error measured
PROMPT = [1, 403, 47, 290, 11, 88, 402, 7, 301, 35, 260, 499, 17, 3, 210, 77]

CASES = [
    ("llama-gqa1", "F32"), ("llama-gqa1", "Q4_0"), ("llama-gqa1", "Q5_0"),
    ("llama-gqa4", "Q4_K_M"), ("llama-gqa4", "Q8_0"),
    ("llama-gqa8", "F32"), ("llama-gqa8", "Q5_K_M"),
    ("qwen2", "F32"), ("qwen2", "Q4_1"),
    ("qwen3", "F32"), ("qwen3", "Q6_K"),
    ("gemma3", "F32"), ("gemma3", "Q4_K_M"),
]

_refs: dict = {}


def reference(path) -> ReferenceModel:
    if path not in _refs:
        _refs[path] = ReferenceModel(path)
    return _refs[path]


def mlx_logits(model, tokens, kv_type="f32", chunk=None, **cache_args):
    """All-position logits, fed in chunks (None: one prefill; 1: token by token)."""
    cache = model.make_cache(kv_type, **cache_args)
    chunk = chunk or len(tokens)
    rows = []
    for lo in range(0, len(tokens), chunk):
        out = model(mx.array([tokens[lo : lo + chunk]]), cache, all_logits=True)
        rows.append(np.array(out[0], dtype=np.float64))
    return np.concatenate(rows)


@pytest.mark.parametrize("shape,quant", CASES)
def test_logits_match_float64_reference(build_model, shape, quant):
    path = build_model(shape, quant)
    ref = reference(path).logits(PROMPT)
    model, _ = load_gguf_model(path)
    bound = LOGIT_RTOL * np.abs(ref).max()
    for chunk in (None, 1, 5):
        got = mlx_logits(model, PROMPT, chunk=chunk)
        assert np.abs(got - ref).max() <= bound, f"chunk {chunk}: {np.abs(got - ref).max()} > {bound}"


@pytest.mark.parametrize("shape", ["llama-gqa4", "qwen3", "gemma3"])
@pytest.mark.parametrize("kv_type,rtol", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_f16_and_8bit_kv_caches_stay_close(build_model, shape, kv_type, rtol):
    path = build_model(shape, "Q4_K_M")
    ref = reference(path).logits(PROMPT)
    model, _ = load_gguf_model(path)
    got = mlx_logits(model, PROMPT, kv_type=kv_type, chunk=4)
    assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def mlx_greedy(model, prompt, n):
    cache = model.make_cache("f32")
    logits = model(mx.array([prompt]), cache)
    out = []
    for _ in range(n):
        token = int(np.array(logits[0]).argmax())
        out.append(token)
        logits = model(mx.array([[token]]), cache)
    return out


@pytest.mark.parametrize("shape,quant", [("llama-gqa8", "Q4_K_M"), ("qwen2", "Q8_0"), ("qwen3", "Q5_K_M"), ("gemma3", "Q6_K")])
def test_greedy_text_equals_reference(build_model, shape, quant):
    """MLX's 32 greedy tokens, checked by one reference pass over prompt + output: each
    token must be the reference's argmax after the same prefix (so, by induction, the
    reference's own greedy text), up to the first near-tie."""
    path = build_model(shape, quant)
    prompt = PROMPT[:4]
    got = mlx_greedy(load_gguf_model(path)[0], prompt, 32)
    ref = reference(path).logits(prompt + got[:-1])[len(prompt) - 1 :]
    tie = NEAR_TIE * np.abs(ref).max()
    for step, (token, row) in enumerate(zip(got, ref)):
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] < tie:
            break  # either token is right here, and the texts may part from now on
        assert token == int(row.argmax()), f"step {step}"
    else:
        step = len(got)
    assert step >= 8, f"a near-tie at step {step} leaves too little compared: pick another prompt"


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["llama-gqa1", "llama-gqa8", "qwen2", "qwen3", "gemma3"])
def test_reference_agrees_with_llama_cpp(build_model, shape):
    from localllm.cpu_backend.llamacpp import LlamaCppBackend
    from localllm.formats.gguf import inspect_gguf

    path = build_model(shape, "F32")
    ref = reference(path).logits(PROMPT)
    backend = LlamaCppBackend(inspect_gguf(path), ctx_size=64, threads=1)
    try:
        got = np.array(backend.forward(PROMPT, backend.new_cache(), all_logits=True).numpy(), dtype=np.float64)
    finally:
        backend.close()
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_sliding_window_cache_drops_old_positions_and_stays_exact(build_model):
    path = build_model("gemma3", "F32")
    tokens = (PROMPT * 3)[:40]
    ref = reference(path).logits(tokens)
    model, _ = load_gguf_model(path)
    cache = model.make_cache("f32", sliding_keep=2)
    rows = [np.array(model(mx.array([[t]]), cache)[0], dtype=np.float64) for t in tokens]
    assert np.abs(np.stack(rows) - ref).max() <= LOGIT_RTOL * np.abs(ref).max()
    sliding = [c for c, layer in zip(cache, model.layers) if not layer.is_global]
    assert sliding and all(c.start > 0 and c.keys.shape[2] <= 8 - 1 + 2 * 2 + 1 for c in sliding)


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ModelFileError, match="'mamba'.*supported: .*gemma3.*llama.*qwen2.*qwen3"):
        architecture_module("mamba")
