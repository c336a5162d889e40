"""MLX model folders (config.json + safetensors + tokenizer files) that the tests build
from the shared GGUF models give the same greedy text as the GGUF itself: stories260K
(plain, SentencePiece tokenizer.model) and SmolLM2 (plain float32, and quantized in
mlx-lm's layout with a per-module bits override, with a tokenizer.json and the chat
template)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localllm.backend.select import load_backend
from localllm.config import Settings
from localllm.engine.generate import generate
from localllm.models.loader import LOADER
from localllm.types import GenerationRequest, Message, SamplingParams
from tests.conftest import require_model
from tests.models.mlx_folders import build_folder

GREEDY = SamplingParams(temperature=0)
_SMOLLM_GGUF_RUN: dict = {}


def _settings() -> Settings:
    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend="mlx", ctx_size=1024)


def _greedy(path, prompt_text: str | None, n: int, chat: bool = False):
    backend = load_backend(str(path), _settings())
    try:
        vocab = backend.vocabulary
        if chat:
            from localllm.tokenizer.chat import ChatPrompter

            ids = ChatPrompter(vocab, backend.info.chat_template).encode([Message("user", prompt_text)])
        else:
            ids = [vocab.bos_id]
        cache = backend.new_cache()
        request = GenerationRequest(tuple(ids), GREEDY, max_tokens=n)
        chunks = list(generate(backend, cache, request))
        return ids, [c.token for c in chunks if c.token is not None], "".join(c.text for c in chunks)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return tmp_path_factory.mktemp("mlx-folders")


def test_stories_folder_matches_its_gguf(folders, stories_path):
    folder = build_folder(stories_path, folders / "stories", tokenizer_model=require_model("stories260K/tok512.model"))
    info = LOADER.inspect(str(folder))
    assert info.architecture == "llama" and info.context_length == 2048
    reference = require_model("stories260K/greedy-reference.txt").read_text()
    assert _greedy(folder, None, 256)[2] == reference.rstrip("\n")


@pytest.mark.slow
@pytest.mark.parametrize("quantized", [False, True])
def test_smollm2_folder_matches_its_gguf(folders, quantized):
    gguf_path = require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    folder = build_folder(gguf_path, folders / f"smollm2-{'q' if quantized else 'plain'}", quantized=quantized)
    question = "What is the capital of France? Answer in one sentence."
    if "gguf" not in _SMOLLM_GGUF_RUN:  # computed once for both folders
        _SMOLLM_GGUF_RUN["gguf"] = _greedy(gguf_path, question, 16, chat=True)
    want_ids, want_tokens, want_text = _SMOLLM_GGUF_RUN["gguf"]
    got_ids, got_tokens, got_text = _greedy(folder, question, 16, chat=True)
    assert got_ids == want_ids  # tokenizer.json + template give the GGUF vocabulary's ids
    assert got_tokens == want_tokens, (got_text, want_text)
    if quantized:
        assert LOADER.inspect(str(folder)).file_type == "MLX 4-bit"
