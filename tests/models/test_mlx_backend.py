"""The MLX backend through the backend protocol and the engine: stories260K's golden text,
SmolLM2 against the float64 reference, caches (trim, state, sliding-window capability,
8-bit KV), the CLI with --backend mlx, and the `auto` choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.backend.select import choose_backend, load_backend
from localllm.config import Settings
from localllm.engine.generate import generate
from localllm.errors import ContextOverflowError
from localllm.types import GenerationRequest, SamplingParams
from tests.conftest import require_model, run_cli

GREEDY = SamplingParams(temperature=0)


def settings(**kw) -> Settings:
    kw.setdefault("ctx_size", 1024)
    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend="mlx", **kw)


@pytest.fixture(scope="module")
def stories_mlx(stories_path):
    backend = load_backend(str(stories_path), settings(ctx_size=2048))
    yield backend
    backend.close()


def greedy_text(backend, prompt_tokens, n):
    cache = backend.new_cache()
    try:
        request = GenerationRequest(tuple(prompt_tokens), GREEDY, max_tokens=n)
        return "".join(c.text for c in generate(backend, cache, request))
    finally:
        cache.close()


def test_stories_greedy_from_bos_equals_llama2c_reference(stories_mlx):
    reference = require_model("stories260K/greedy-reference.txt").read_text()
    assert stories_mlx.name == "mlx"
    assert greedy_text(stories_mlx, [stories_mlx.vocabulary.bos_id], 256) == reference.rstrip("\n")


def test_cli_runs_the_mlx_backend(stories_path):
    """`run --backend mlx` continues "Once upon a time" exactly as the golden text does."""
    reference = require_model("stories260K/greedy-reference.txt").read_text()
    r = run_cli("run", str(stories_path), "Once upon a time", "--backend", "mlx", "--temperature", "0",
                "--max-tokens", "100", "--no-cache", "--stats", "json")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) > 200 and reference.startswith("Once upon a time" + r.stdout.rstrip("\n"))
    assert '"backend": "mlx"' in r.stderr


def test_trim_then_refeed_gives_the_same_logits(stories_mlx):
    b = stories_mlx
    tokens = b.vocabulary.encode("Once upon a time, there was a dog named Max.")
    cache = b.new_cache()
    try:
        first = b.forward(tokens, cache, all_logits=True).numpy().copy()
        b.trim(cache, 5)
        assert cache.tokens == tokens[:5]
        again = b.forward(tokens[5:], cache, all_logits=True).numpy()
        np.testing.assert_allclose(again, first[5:], atol=1e-4)
    finally:
        cache.close()


def test_state_round_trip_and_refusals(stories_mlx):
    b = stories_mlx
    tokens = b.vocabulary.encode("The cat sat on the mat.")
    src, dst = b.new_cache(), b.new_cache()
    try:
        b.forward(tokens, src)
        state = b.save_state(src)
        want = b.forward([42], src).numpy().copy()
        assert b.load_state(dst, tokens, state)
        assert dst.tokens == tokens
        np.testing.assert_allclose(b.forward([42], dst).numpy(), want, atol=1e-5)
        assert not b.load_state(dst, tokens[:-1], state)  # token count differs
        assert dst.tokens == []
        assert not b.load_state(dst, tokens, b"not a state")
    finally:
        src.close()
        dst.close()


def test_context_overflow_leaves_the_cache_unchanged(stories_path):
    b = load_backend(str(stories_path), settings(ctx_size=16))
    try:
        cache = b.new_cache()
        b.forward(list(range(3, 13)), cache)
        with pytest.raises(ContextOverflowError):
            b.forward(list(range(3, 13)), cache)
        assert len(cache.tokens) == 10
    finally:
        b.close()


def test_gemma3_sliding_cache_reports_how_far_it_trims(build_model):
    path = build_model("gemma3", "Q4_K_M")
    b = load_backend(str(path), settings(ctx_size=512))
    try:
        b.sliding_keep = 16  # window 8 + 16 positions kept: dropping starts early
        cache = b.new_cache()
        tokens = [1] + [3 + (i * 7) % 500 for i in range(300)]
        b.forward(tokens[:20], cache)
        assert b.cache_capability(cache).min_tokens == 0  # nothing dropped yet
        for t in tokens[20:]:
            b.forward([t], cache)
        cap = b.cache_capability(cache)
        assert len(tokens) - 2 * 16 - 8 <= cap.min_tokens <= len(tokens) - 16
        with pytest.raises(ValueError):
            b.trim(cache, cap.min_tokens - 1)
        assert len(cache.tokens) == len(tokens)
        want = b.forward([5], cache).numpy().copy()
        b.trim(cache, len(tokens))
        np.testing.assert_allclose(b.forward([5], cache).numpy(), want, atol=1e-4)
        b.trim(cache, cap.min_tokens)
        assert len(cache.tokens) == cap.min_tokens
        b.trim(cache, 0)
        assert cache.tokens == [] and b.cache_capability(cache).min_tokens == 0
    finally:
        b.close()


@pytest.mark.parametrize("kv_type", ["f16", "q8_0"])
def test_kv_types_report_bytes(build_model, kv_type):
    b = load_backend(str(build_model("llama-gqa4", "Q4_K_M")), settings(kv_type=kv_type))
    try:
        cache = b.new_cache()
        b.forward(list(range(1, 101)), cache)
        per_token = b.cache_bytes(cache) / 256  # buffers grow 256 positions at a time
        assert per_token == pytest.approx(b.kv_bytes_per_token, rel=0.05)
        assert b.memory().kv_cache_bytes >= b.cache_bytes(cache)
    finally:
        b.close()


def test_auto_stays_on_llama_cpp_off_apple_silicon(stories_path):
    from localllm.backend.select import is_apple_silicon

    name, note = choose_backend("auto", str(stories_path))
    assert name == ("mlx" if is_apple_silicon() else "llamacpp") and note is None


@pytest.mark.slow
def test_smollm2_logits_match_float64_reference():
    from tests.models.numpy_reference import ReferenceModel

    path = require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    b = load_backend(str(path), settings(kv_type="f16"))
    try:
        tokens = b.vocabulary.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
        got = b.forward(tokens, b.new_cache(), all_logits=True).numpy().astype(np.float64)
    finally:
        b.close()
    ref = ReferenceModel(path, weight_dtype=np.float32).logits(tokens)
    # f16 KV cache: measured 3e-3 at most (1.1e-4 with a float32 cache).
    assert np.abs(got - ref).max() <= 2e-2
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_cli_refuses_what_mlx_cannot_run_in_one_line(tmp_path):
    """An architecture outside the MLX table (a Mamba) and a vocabulary-only GGUF: exit 2
    and one line naming what to do."""
    from tests.backends.cache_kind_models import write_mamba
    from tests.conftest import models_dir

    mamba = write_mamba(tmp_path / "mamba.gguf", models_dir())
    r = run_cli("run", str(mamba), "hi", "--backend", "mlx")
    assert r.returncode == 2
    assert "architecture 'mamba' is not supported on the MLX path" in r.stderr and "--backend llamacpp" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    vocab_only = require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    r = run_cli("run", str(vocab_only), "hi", "--backend", "mlx")
    assert r.returncode == 2 and "only a vocabulary" in r.stderr


def test_a_state_is_refused_once_the_weights_change(stories_path, tmp_path):
    import os
    import shutil

    path = tmp_path / "stories.gguf"
    shutil.copy(stories_path, path)
    first = load_backend(str(path), settings())
    cache = first.new_cache()
    first.forward([1, 400, 401], cache)
    state = first.save_state(cache)
    assert first.load_state(first.new_cache(), [1, 400, 401], state)
    first.close()
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    second = load_backend(str(path), settings())
    try:
        assert not second.load_state(second.new_cache(), [1, 400, 401], state)
    finally:
        second.close()
