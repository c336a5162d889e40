"""Fill-in-the-middle: FIM tokens are found from GGUF metadata or the vocabulary, laid
out prefix-suffix-middle, and `suffix` works end to end where a model has them."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from localllm.server.config import ServerConfig
from localllm.server.fim import FimTokens, find_fim_tokens, infill_tokens
from tests.server.conftest import server_settings, start_server

SPECIAL = {"<|fim_prefix|>": 90, "<|fim_suffix|>": 91, "<|fim_middle|>": 92}


class FakeVocab:
    """The parts of the `Tokenizer` protocol FIM uses, over a toy vocabulary."""

    vocab_size = 100
    bos_id = 1
    add_bos = True

    def encode(self, text, add_bos=True, special=False):
        if special and text in SPECIAL:
            return [SPECIAL[text]]
        return [10 + ord(c) % 50 for c in text]

    def is_control(self, token):
        return token in SPECIAL.values()

    def token_text(self, token):
        return next((text for text, t in SPECIAL.items() if t == token), chr(token))


def fake_model(metadata=None, vocab=None):
    return SimpleNamespace(tokenizer=vocab or FakeVocab(), info=SimpleNamespace(metadata=metadata or {}))


def test_fim_tokens_from_metadata_and_layout():
    model = fake_model({"tokenizer.ggml.fim_pre_token_id": 3, "tokenizer.ggml.fim_suf_token_id": 4,
                        "tokenizer.ggml.fim_mid_token_id": 5})
    assert find_fim_tokens(model) == FimTokens(3, 4, 5)
    v = model.tokenizer
    assert infill_tokens(model, "ab", "c") == [1, 3, *v.encode("ab"), 4, *v.encode("c"), 5]


def test_fim_tokens_from_older_metadata_keys():
    model = fake_model({"tokenizer.ggml.prefix_token_id": 6, "tokenizer.ggml.suffix_token_id": 7,
                        "tokenizer.ggml.middle_token_id": 8})
    assert find_fim_tokens(model) == FimTokens(6, 7, 8)


def test_fim_tokens_from_the_vocabulary():
    assert find_fim_tokens(fake_model()) == FimTokens(90, 91, 92)


def test_no_fim_tokens():
    class Plain(FakeVocab):
        def encode(self, text, add_bos=True, special=False):
            return [10 + ord(c) % 50 for c in text]

    model = fake_model(vocab=Plain())
    assert find_fim_tokens(model) is None and infill_tokens(model, "a", "b") is None


def test_stories260k_has_no_fim_tokens(direct_model):
    assert find_fim_tokens(direct_model) is None


def fim_loader(name, settings):
    """stories260K, told that three of its tokens are FIM markers: enough to drive the
    suffix path end to end (the text it writes is no real infill)."""
    from localllm.runtime import load_model

    model = load_model(name, settings)
    model._server_fim_tokens = FimTokens(pre=3, suf=4, mid=5)
    return model


@pytest.fixture(scope="module")
def fim_server(stories_path, tmp_path_factory):
    running = start_server(ServerConfig(port=0, allow_model_paths=True), server_settings(tmp_path_factory.mktemp("fim-home")),
                           loader=fim_loader)
    yield running
    running.stop()


def test_suffix_end_to_end(fim_server, model_name, direct_model):
    backend = direct_model.engine.backend
    prefix, suffix = "Once upon a time", "happily ever after."
    n_expected = 1 + 1 + len(backend.vocabulary.encode(prefix, add_bos=False)) + 1 + len(backend.vocabulary.encode(suffix, add_bos=False)) + 1
    r = httpx.post(fim_server.url + "/v1/completions", timeout=60, json={
        "model": model_name, "prompt": prefix, "suffix": suffix, "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == n_expected
    r = httpx.post(fim_server.url + "/api/generate", timeout=60, json={
        "model": model_name, "prompt": prefix, "suffix": suffix, "stream": False, "options": {"num_predict": 4}})
    assert r.status_code == 200 and r.json()["prompt_eval_count"] == n_expected
