"""Shared fixtures: where the real test models are, and one loaded stories260K backend.

Models are found through LOCALLLM_TEST_MODELS (default: ../shared/models next to the
repo). A missing model skips its tests with the reason, except under CI=true, where it
fails: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    return Path(os.environ.get("LOCALLLM_TEST_MODELS", REPO.parent / "shared" / "models"))


def require_model(relative: str) -> Path:
    path = models_dir() / relative
    if not path.exists():
        message = f"test model {path} is missing (set LOCALLLM_TEST_MODELS to the shared models folder)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def stories_path() -> Path:
    return require_model("stories260K/stories260K.gguf")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real chat model (ChatML template, GPT-2-style BPE)."""
    return require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def stories_backend(stories_path):
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    backend = load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=2048))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def numpy_backend(stories_path):
    """stories260K on the numpy reference backend with its SentencePiece vocabulary: the
    engine and the KV-cache manager without llama.cpp (tests/backends/reference_numpy.py)."""
    sys.path.insert(0, str(REPO / "tests" / "backends"))
    from reference_numpy import NumpyReferenceBackend
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

    backend = NumpyReferenceBackend(stories_path, SentencePieceTokenizer(require_model("stories260K/tok512.model")), ctx_size=512)
    yield backend
    backend.close()


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A private LOCALLLM_HOME and config so tests never touch the user's data."""
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALLLM_HOME", str(home))
    monkeypatch.setenv("LOCALLLM_CONFIG", str(tmp_path / "config.toml"))
    return home


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (`python -m localllm`)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args],
        input=input, capture_output=True, text=True, env=full_env, timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def kquant_model(tmp_path_factory) -> Path:
    """A small random llama (dims multiples of 256, GQA 2) quantized to Q4_K_M by
    llama.cpp's own quantizer, with the real Llama 2 vocabulary."""
    require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synthetic_model import LLAMA_TINY_KQUANT, cached_model

    return cached_model(LLAMA_TINY_KQUANT, "Q4_K_M", folder=tmp_path_factory.mktemp("kquant"))


@pytest.fixture(scope="session")
def embedding_models(stories_path, smollm_path, tmp_path_factory) -> dict[str, Path]:
    """Embedding models built for the session: stories260K with mean, CLS and last-token
    pooling, a tiny BERT (CLS), and SmolLM2 with mean pooling (slow enough to overlap
    a chat stream with embeddings)."""
    from tests.model_builders import bert_style, with_pooling

    folder = tmp_path_factory.mktemp("embedding-models")
    models = {f"stories-{p}": with_pooling(stories_path, folder, p) for p in ("mean", "cls", "last")}
    models["bert-cls"] = bert_style(folder)
    models["smollm-mean"] = with_pooling(smollm_path, folder, "mean")
    return models


@pytest.fixture(scope="session")
def fim_models(smollm_path, tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight models with FIM tokens: Qwen2.5-Coder's convention (with
    repository markers and fim_* metadata) and CodeLlama's (with and without metadata)."""
    from tests.model_builders import codellama_style, qwen_coder_style

    vocab = require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    folder = tmp_path_factory.mktemp("fim-models")
    return {"qwen": qwen_coder_style(smollm_path, folder), "codellama": codellama_style(vocab, folder),
            "codellama-nometa": codellama_style(vocab, folder, metadata=False)}
