"""Raw prompts parse special tokens: a ChatML prompt a client formats itself (Ollama `raw`,
`/v1/completions`, `run --raw`) is the same tokens, and gets the same greedy reply, as the
chat endpoint with the same messages, on the real SmolLM2 chat model. Chat messages keep
the rule that user text never becomes a control token."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest

from localllm.server.config import ServerConfig
from tests.conftest import run_cli
from tests.server.conftest import CTX, server_settings, start_server, wait_until

SYSTEM = "You are a helpful assistant."
USER = "Say hello."
RAW_CHATML = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{USER}<|im_end|>\n"
              "<|im_start|>assistant\n")
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def smol_server(smollm_path, tmp_path_factory):
    settings = replace(server_settings(tmp_path_factory.mktemp("raw-home")), flash_attn="on")
    running = start_server(ServerConfig(port=0, preload=str(smollm_path)), settings)
    wait_until(lambda: any(s.state == "ready" for s in running.state.models.slots()), timeout=120)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def llama_cpp_special_tokens(smollm_path):
    """llama.cpp's own tokenizer, special-token parsing on (llama-cpp-python's Llama)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(smollm_path), vocab_only=True, verbose=False)
    return vocab.tokenize(RAW_CHATML.encode(), add_bos=True, special=True)


@pytest.fixture(scope="module")
def chat_reply(smol_server, smollm_path):
    r = httpx.post(smol_server.url + "/v1/chat/completions", timeout=120, json={
        "model": str(smollm_path), "temperature": 0, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"].strip()
    return body


def test_raw_chatml_is_the_chat_prompt_token_for_token(chat_reply, llama_cpp_special_tokens):
    assert "<|im_start|>" not in llama_cpp_special_tokens  # sanity: ids, not text
    assert chat_reply["usage"]["prompt_tokens"] == len(llama_cpp_special_tokens)


def test_v1_completions_raw_chatml_matches_chat(smol_server, smollm_path, chat_reply, llama_cpp_special_tokens):
    r = httpx.post(smol_server.url + "/v1/completions", timeout=120, json={
        "model": str(smollm_path), "prompt": RAW_CHATML, "temperature": 0, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(llama_cpp_special_tokens)
    assert body["choices"][0]["text"] == chat_reply["choices"][0]["message"]["content"]


def test_ollama_raw_generate_matches_chat(smol_server, smollm_path, chat_reply, llama_cpp_special_tokens):
    r = httpx.post(smol_server.url + "/api/generate", timeout=120, json={
        "model": str(smollm_path), "prompt": RAW_CHATML, "raw": True, "stream": False,
        "options": {"temperature": 0, "num_predict": MAX_TOKENS}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_eval_count"] == len(llama_cpp_special_tokens)
    assert body["response"] == chat_reply["choices"][0]["message"]["content"]


def test_user_text_never_becomes_a_control_token(smol_server, smollm_path, llama_cpp_special_tokens):
    """Through the chat template (Ollama generate without raw), the same text is the
    user's words: its markers stay plain text, so it is many more tokens."""
    r = httpx.post(smol_server.url + "/api/generate", timeout=120, json={
        "model": str(smollm_path), "prompt": RAW_CHATML, "stream": False, "options": {"num_predict": 1}})
    assert r.status_code == 200, r.text
    assert r.json()["prompt_eval_count"] > len(llama_cpp_special_tokens) + 20


@pytest.mark.slow
def test_run_raw_matches_chat(smollm_path, chat_reply, isolated_home):
    """The same computation as the server's: flash attention on (the server decodes several
    sequences together, so auto turns it on; alone, auto measures which is faster here) and no
    drafts (verifying a draft batches tokens, whose sums round differently), so greedy must agree."""
    out = run_cli("run", str(smollm_path), RAW_CHATML, "--raw", "--temperature", "0", "--max-tokens",
                  str(MAX_TOKENS), "--ctx-size", str(CTX), "--threads", "1", "--stats", "json",
                  "--flash-attn", "on", "--draft", "none")
    assert out.returncode == 0, out.stderr
    assert out.stdout == chat_reply["choices"][0]["message"]["content"] + "\n"
