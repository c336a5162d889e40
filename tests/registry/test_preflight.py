"""Load preflight: estimates from GGUF headers against available memory, and the advice
given when a model would not fit."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from localllm.formats.gguf import inspect_gguf
from localllm.backend.preflight import InsufficientMemoryError, available_memory, check_memory as check
from localllm.cpu_backend.loader import LOADER, estimate_llamacpp_memory
from localllm.types import ModelInfo
from localllm.config import Settings

GIB = 1 << 30


def llama31_8b_q4() -> ModelInfo:
    """The header facts of Llama 3.1 8B Instruct Q4_K_M (no file needed)."""
    meta = {
        "llama.block_count": 32, "llama.attention.head_count": 32, "llama.attention.head_count_kv": 8,
        "llama.embedding_length": 4096, "llama.feed_forward_length": 14336,
        "_weights_bytes": int(4.58 * GIB),
    }
    return ModelInfo(path="/nowhere/llama.gguf", architecture="llama", name="Llama 3.1 8B Instruct",
                     context_length=131072, vocab_size=128256, n_params=8_030_000_000, file_type="Q4_K_M", metadata=meta)


def estimate_memory(info, ctx_size, kv_type, kv_contexts=1):
    return estimate_llamacpp_memory(info, ctx_size, kv_type, kv_contexts)


def check_memory(info, settings, **kw):
    """The preflight with llama.cpp's estimate."""
    return check(info, settings, LOADER.estimate_memory, **kw)


def settings(tmp_path, **kw) -> Settings:
    return Settings(home=tmp_path, cache_dir=tmp_path, backend="llamacpp", **kw)


def test_estimate_parts_follow_the_header():
    info = llama31_8b_q4()
    f16 = estimate_memory(info, 4096, "f16", kv_contexts=2)
    # 32 layers x 8 KV heads x (128 + 128) values x 8192 cells x 2 bytes
    assert f16.kv_cache_bytes == 32 * 8 * 256 * 8192 * 2 == 1 * GIB
    q8 = estimate_memory(info, 4096, "q8_0", kv_contexts=2)
    assert q8.kv_cache_bytes == pytest.approx(f16.kv_cache_bytes * 34 / 64)
    assert q8.compute_bytes < f16.compute_bytes  # flash attention holds no full score matrix
    assert estimate_memory(info, 1 << 20, "f16").ctx_size == 1 << 20  # honoured beyond training, as loaded
    assert f16.available_bytes is None and f16.fits  # unknown memory never refuses


def test_stories260k_fits_this_machine(tmp_path, stories_path):
    estimate = check_memory(inspect_gguf(stories_path), settings(tmp_path))
    assert estimate.fits and estimate.weights_bytes == 1_171_200
    if sys.platform.startswith("linux"):
        source = estimate.available_source
        assert estimate.available_bytes > 0 and ("MemAvailable" in source or "cgroup" in source)


def test_a_model_larger_than_memory_is_refused_with_the_probe(tmp_path):
    huge = replace(llama31_8b_q4(), n_params=1 << 50, metadata=llama31_8b_q4().metadata | {"_weights_bytes": 1 << 50})
    with pytest.raises(InsufficientMemoryError, match=r"needs about .* but .* is available \(.*\): use a smaller model .*--force"):
        check_memory(huge, settings(tmp_path))
    forced = check_memory(huge, settings(tmp_path), force=True)
    assert not forced.fits and forced.total_bytes > 1 << 50
    assert available_memory()[0] is None or available_memory()[0] < 1 << 50


def test_too_long_a_context_suggests_a_shorter_one_or_q8_kv(tmp_path):
    with pytest.raises(InsufficientMemoryError) as e:
        check_memory(llama31_8b_q4(), settings(tmp_path, ctx_size=32768), available_bytes=6 * GIB)
    message = str(e.value)
    assert "KV cache 4.0 GiB for 32768 tokens x 1 at f16" in message  # llama.cpp keeps one context of KV
    assert "use --ctx-size 4096 or --ctx-size 8192 --kv-type q8_0, or pass --force" in message
    assert check_memory(llama31_8b_q4(), settings(tmp_path, ctx_size=2048), available_bytes=6 * GIB).fits


def test_weights_too_big_suggest_a_smaller_quant_or_model(tmp_path):
    with pytest.raises(InsufficientMemoryError, match=r"use a smaller quant such as Q3_K_M \(about 3.7 GiB of weights\)"):
        check_memory(llama31_8b_q4(), settings(tmp_path, ctx_size=2048), available_bytes=5 * GIB)
    with pytest.raises(InsufficientMemoryError, match="use a smaller model"):
        check_memory(llama31_8b_q4(), settings(tmp_path, ctx_size=2048), available_bytes=2 * GIB)
