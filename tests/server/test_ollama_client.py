"""The Ollama shapes, driven by the official `ollama` client against the real server."""

from __future__ import annotations

import pytest
from ollama import Client, ResponseError

from localllm.types import Message, SamplingParams

GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def client(server):
    return Client(host=server.url, timeout=60)


def test_chat_streams_by_default_and_matches(client, model_name, direct_model):
    expected = direct_model.chat([Message("user", "Once upon a time")], GREEDY, max_tokens=30).text()
    parts = list(client.chat(model=model_name, messages=[{"role": "user", "content": "Once upon a time"}],
                             stream=True, options={"temperature": 0, "num_predict": 30}))
    assert "".join(p.message.content for p in parts) == expected
    assert all(not p.done for p in parts[:-1])
    last = parts[-1]
    assert last.done and last.done_reason == "length"
    assert last.eval_count == 30
    assert last.prompt_eval_count > 0
    # Nanoseconds: positive integers, and the total covers prefill and decode.
    assert isinstance(last.total_duration, int) and last.total_duration > 0
    assert last.total_duration >= last.prompt_eval_duration + last.eval_duration
    assert last.total_duration < 60 * 10**9


def test_chat_not_streamed(client, model_name, direct_model):
    expected = direct_model.chat([Message("user", "Once upon a time")], GREEDY, max_tokens=12).text()
    r = client.chat(model=model_name, messages=[{"role": "user", "content": "Once upon a time"}],
                    options={"temperature": 0, "num_predict": 12})
    assert r.message.role == "assistant" and r.message.content == expected
    assert r.done and r.eval_count == 12


def test_generate_stream_and_not(client, model_name, direct_model):
    expected = direct_model.complete("Once upon a time", GREEDY, max_tokens=20).text()
    r = client.generate(model=model_name, prompt="Once upon a time", options={"temperature": 0, "num_predict": 20})
    assert r.response == expected and r.done_reason == "length"
    streamed = "".join(p.response for p in client.generate(
        model=model_name, prompt="Once upon a time", stream=True, options={"temperature": 0, "num_predict": 20}))
    assert streamed == expected


def test_generate_options_stop_and_seed(client, model_name, direct_model):
    full = direct_model.complete("Once upon a time", GREEDY, max_tokens=60).text()
    r = client.generate(model=model_name, prompt="Once upon a time",
                        options={"temperature": 0, "num_predict": 60, "stop": ["Lily"]})
    assert r.response == full[: full.index("Lily")] and r.done_reason == "stop"
    a = client.generate(model=model_name, prompt="Once", options={"seed": 5, "temperature": 1, "num_predict": 30})
    b = client.generate(model=model_name, prompt="Once", options={"seed": 5, "temperature": 1, "num_predict": 30})
    assert a.response == b.response


def test_empty_generate_loads_and_reports(client, model_name):
    r = client.generate(model=model_name)
    assert r.done and r.done_reason == "load"


def test_ps_version_and_show(client, model_name):
    running = client.ps().models
    assert [m.model for m in running] == [model_name]
    assert running[0].context_length == 1024 and running[0].size > 0
    assert client._request_raw("GET", "/api/version").json()["version"]
    shown = client.show(model_name)
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"


def test_tags_lists_the_model_loaded_by_path_with_details(client, model_name):
    # The test home has nothing pulled: the one model is the server's `--model PATH`.
    models = client.list().models
    assert [m.model for m in models] == [model_name]
    details = models[0].details
    assert (details.format, details.family, details.families) == ("gguf", "llama", ["llama"])
    assert details.parameter_size == "292.8K" and details.quantization_level == "F32"


def test_unknown_model_is_404(client):
    with pytest.raises(ResponseError) as e:
        client.chat(model="no-such-model:7b", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert "no-such-model" in e.value.error


def test_pull_of_unknown_name_reports_error(client):
    with pytest.raises(ResponseError) as e:
        client.pull("definitely-not-a-model-zz:1b")
    assert e.value.error


def test_delete_unknown_is_404(client):
    with pytest.raises(ResponseError) as e:
        client.delete("definitely-not-a-model-zz:1b")
    assert e.value.status_code == 404
