"""The OpenAI shapes, driven by the official `openai` client against the real server."""

from __future__ import annotations

import pytest
from openai import OpenAI

from localllm.types import Message, SamplingParams

GREEDY = SamplingParams(temperature=0)
MESSAGES = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture(scope="module")
def client(server):
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def direct_chat(direct_model, messages, max_tokens):
    msgs = [Message(m["role"], m["content"]) for m in messages]
    return direct_model.chat(msgs, GREEDY, max_tokens=max_tokens).text()


def test_chat_completion_matches_the_engine(client, model_name, direct_model):
    r = client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=0, max_tokens=40)
    expected = direct_chat(direct_model, MESSAGES, 40)
    assert r.object == "chat.completion"
    assert r.model == model_name
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 40
    assert r.usage.prompt_tokens == len(direct_model.chat_tokens([Message("user", "Once upon a time")]))
    assert r.usage.total_tokens == r.usage.prompt_tokens + 40
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_with_usage_ends_and_matches(client, model_name, direct_model):
    stream = client.chat.completions.create(
        model=model_name, messages=MESSAGES, temperature=0, max_completion_tokens=30, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct_chat(direct_model, MESSAGES, 30)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    # The same prompt again: its prefix comes from the KV cache, and usage says so.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(client, model_name):
    chunks = list(client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=5, stream=True))
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_sequence_and_eos(client, model_name, direct_model):
    full = direct_chat(direct_model, MESSAGES, 60)
    assert "Lily" in full
    r = client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=0, max_tokens=60, stop=["Lily"])
    assert r.choices[0].message.content == full[: full.index("Lily")]
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client, model_name):
    def sample(seed):
        return client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=1.0, seed=seed,
                                              max_tokens=40).choices[0].message.content

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_logit_bias_bans_a_token(client, model_name, direct_model):
    backend = direct_model.engine.backend
    full = direct_chat(direct_model, MESSAGES, 20)
    first = backend.vocabulary.encode(full, add_bos=False)[0]
    r = client.chat.completions.create(model=model_name, messages=MESSAGES, temperature=0, max_tokens=20,
                                       logit_bias={str(first): -100})
    assert r.choices[0].message.content != full


def test_penalties_are_accepted(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=10, temperature=0.7,
                                       top_p=0.9, presence_penalty=0.5, frequency_penalty=0.5)
    assert r.usage.completion_tokens <= 10


def test_completion_matches_the_engine(client, model_name, direct_model):
    expected = direct_model.complete("Once upon a time", GREEDY, max_tokens=25).text()
    r = client.completions.create(model=model_name, prompt="Once upon a time", temperature=0, max_tokens=25)
    assert r.object == "text_completion"
    assert r.choices[0].text == expected
    assert r.usage.completion_tokens == 25


def test_completion_stream_and_echo(client, model_name, direct_model):
    expected = direct_model.complete("Once upon a time", GREEDY, max_tokens=15).text()
    chunks = list(client.completions.create(model=model_name, prompt="Once upon a time", temperature=0,
                                            max_tokens=15, stream=True, echo=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "Once upon a time" + expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_default_max_tokens_is_16(client, model_name):
    r = client.completions.create(model=model_name, prompt="Once upon a time", temperature=0)
    assert r.usage.completion_tokens <= 16


def test_completion_from_token_ids(client, model_name, direct_model):
    tokens = direct_model.text_tokens("Once upon a time")
    expected = direct_model.complete("Once upon a time", GREEDY, max_tokens=10).text()
    r = client.completions.create(model=model_name, prompt=tokens, temperature=0, max_tokens=10)
    assert r.choices[0].text == expected


def test_models_lists_the_loaded_model(client, model_name):
    ids = [m.id for m in client.models.list().data]
    assert model_name in ids
    assert client.models.retrieve(model_name).id == model_name


def test_extra_body_sampling_fields(client, model_name):
    r = client.chat.completions.create(model=model_name, messages=MESSAGES, max_tokens=5,
                                       extra_body={"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.1})
    assert r.choices[0].message.content
