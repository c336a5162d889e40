"""k-quants and the q8_0 KV cache on a model the tests build with llama.cpp's quantizer."""

from pathlib import Path

import numpy as np

from conftest import run_cli
from localllm.formats.gguf import inspect_gguf
from localllm.backend.select import load_backend
from localllm.config import Settings


def settings(**kw):
    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=256, **kw)


def test_model_is_really_k_quantized(kquant_model):
    info = inspect_gguf(kquant_model)
    assert info.file_type == "Q4_K_M"
    assert info.architecture == "llama" and info.vocab_size == 32000


def test_q8_0_kv_cache_tracks_f16(kquant_model):
    logits, kv_bytes = {}, {}
    for kv in ("f16", "q8_0"):
        b = load_backend(str(kquant_model), settings(kv_type=kv))
        try:
            prompt = b.vocabulary.encode("The quick brown fox jumps over the lazy dog " * 4)
            cache = b.new_cache()
            logits[kv] = b.forward(prompt, cache, all_logits=True).numpy().copy()
            cache.close()
            kv_bytes[kv] = b.memory().kv_cache_bytes
        finally:
            b.close()
    assert kv_bytes["q8_0"] < 0.6 * kv_bytes["f16"]
    diff = np.abs(logits["f16"] - logits["q8_0"]).max()
    spread = logits["f16"].std()
    assert 0 < diff < 0.15 * spread  # quantized keys and values: close, not identical
    agree = (logits["f16"].argmax(axis=1) == logits["q8_0"].argmax(axis=1)).mean()
    assert agree >= 0.9


def test_cli_runs_the_k_quant_model_with_q8_0_kv(kquant_model, isolated_home):
    r = run_cli("run", str(kquant_model), "Hello there", "--temperature", "0", "--max-tokens", "6", "--kv-type", "q8_0", "--stats", "json")
    assert r.returncode == 0, r.stderr
    assert '"generated_tokens": 6' in r.stderr


def test_kv_type_the_model_cannot_take_is_a_clear_error(stories_path, isolated_home):
    r = run_cli("run", str(stories_path), "hi", "--kv-type", "q8_0")
    assert r.returncode == 2
    assert "--kv-type f16" in r.stderr and "Traceback" not in r.stderr
