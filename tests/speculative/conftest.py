"""Backends for the speculative decoding tests: llama.cpp and the numpy reference backend,
both over stories260K. llama.cpp runs one thread: on a busy machine its threads wait on
each other at every barrier (a 1-token pass measured 10x slower with 2 threads than 1)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def stories_llamacpp(stories_path):
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    # One shared KV buffer (--parallel 1): the tests here hold several caches at once.
    backend = load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                                                       ctx_size=1024, threads=1, parallel=1))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def numpy_stories(stories_path):
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
    from tests.backends.reference_numpy import NumpyReferenceBackend

    backend = NumpyReferenceBackend(stories_path, SentencePieceTokenizer(stories_path.parent / "tok512.model"), ctx_size=512)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def stories_mlx(stories_path):
    """The MLX backend (its CPU build off Apple Silicon); skipped where MLX is missing."""
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    pytest.importorskip("mlx.core")
    backend = load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                                                       backend="mlx", ctx_size=1024))
    yield backend
    backend.close()


@pytest.fixture(params=["llamacpp", "mlx", "numpy"])
def any_backend(request):
    """Every backend available here, on stories260K."""
    return request.getfixturevalue({"llamacpp": "stories_llamacpp", "mlx": "stories_mlx",
                                    "numpy": "numpy_stories"}[request.param])
