"""Structured output, tool calling and logprobs through the real server on SmolLM2, with
the official `openai` and `ollama` clients and LangChain's `bind_tools`."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.server.conftest import start_named_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30},
                           "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time in a timezone",
                 "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 30}},
                                "required": ["tz"], "additionalProperties": False}},
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20},
                   "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3}},
    "required": ["name", "tags"], "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(smollm_path, tmp_path_factory):
    s = start_named_server({"smollm": smollm_path}, tmp_path_factory.mktemp("home"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _ask(text):
    return [{"role": "user", "content": text}]


def test_json_schema_reply_validates_streamed_and_not(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for seed in range(3):
        r = client.chat.completions.create(model="smollm", messages=_ask("Describe a person."), seed=seed,
                                           temperature=1.0, response_format=fmt, max_tokens=120)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(model="smollm", messages=_ask("Describe a person."), seed=5,
                                            temperature=1.0, response_format=fmt, max_tokens=120, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_reply_parses(client):
    r = client.chat.completions.create(model="smollm", messages=_ask("A JSON object about a dog."), seed=1,
                                       response_format={"type": "json_object"}, max_tokens=150)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].finish_reason == "length"


def test_a_schema_llguidance_cannot_enforce_is_a_400(server):
    body = {"model": "smollm", "messages": _ask("hi"),
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "array", "uniqueItems": True}}}}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "uniqueItems" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", json={**body, "response_format": {"type": "yaml"}}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.type"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_call_then_a_final_answer(client, choice):
    messages = _ask("What is the weather in Paris?")
    r = client.chat.completions.create(model="smollm", messages=messages, tools=[WEATHER, TIME],
                                       tool_choice=choice, max_tokens=120, temperature=0)
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls"
    call = choice0.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    if choice != "required":
        assert call.function.name == "get_weather"
    tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    # The tool's result goes back; the model answers in text (tool_choice none: this
    # 135M model would otherwise happily call again).
    messages += [choice0.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'}]
    final = client.chat.completions.create(model="smollm", messages=messages, tools=[WEATHER, TIME],
                                           tool_choice="none", max_tokens=60, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length") and final.choices[0].message.content
    assert not final.choices[0].message.tool_calls


def test_streamed_tool_call_deltas(client):
    stream = client.chat.completions.create(model="smollm", messages=_ask("Weather in Rome?"), tools=[WEATHER],
                                            tool_choice="required", max_tokens=120, temperature=0, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": d.id, "name": "", "arguments": ""})
            slot["name"] += d.function.name or ""
            slot["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


def test_tool_choice_naming_an_unknown_function_is_a_400(server):
    body = {"model": "smollm", "messages": _ask("hi"), "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"]


def test_ollama_client_format_and_tools(server):
    import ollama

    c = ollama.Client(host=server.url)
    r = c.chat(model="smollm", messages=_ask("Describe a person."), format=PERSON, options={"seed": 2})
    jsonschema.validate(json.loads(r.message.content), PERSON)
    r = c.chat(model="smollm", messages=_ask("JSON about a cat"), format="json", options={"num_predict": 150})
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.message.content), dict)
    # Ollama has no tool_choice: a forced call comes from the OpenAI side; here the model
    # may answer or call. Either way, a call's arguments validate.
    r = c.chat(model="smollm", messages=_ask("What is the weather in Paris? Use the tool."), tools=[WEATHER],
               options={"temperature": 0, "num_predict": 120})
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)
    # A tool result in the history is accepted and answered.
    history = _ask("Weather in Paris?") + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                          "arguments": {"city": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": "21 degrees and sunny", "tool_name": "get_weather"}]
    r = c.chat(model="smollm", messages=history, tools=[WEATHER], options={"temperature": 0, "num_predict": 40})
    assert r.message.content or r.message.tool_calls


def test_langchain_bind_tools(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="smollm", temperature=0, max_tokens=120)
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("What is the weather in Oslo?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(msg.tool_calls[0]["args"], WEATHER["function"]["parameters"])


def test_logprobs_chat_and_completions_streamed_and_not(client):
    r = client.chat.completions.create(model="smollm", messages=_ask("Say hello."), logprobs=True, top_logprobs=3,
                                       max_tokens=8, temperature=0)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    assert "".join(e.token for e in entries) == r.choices[0].message.content
    for e in entries:  # greedy: the chosen token is the most likely one
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob) and e.logprob <= 0
    stream = client.chat.completions.create(model="smollm", messages=_ask("Say hello."), logprobs=True,
                                            top_logprobs=3, max_tokens=8, temperature=0, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    c = client.completions.create(model="smollm", prompt="The capital of France is", logprobs=2, max_tokens=5,
                                  temperature=0)
    lp = c.choices[0].logprobs
    assert "".join(lp.tokens) == c.choices[0].text and len(lp.top_logprobs[0]) == 2
    s = client.completions.create(model="smollm", prompt="The capital of France is", logprobs=2, max_tokens=5,
                                  temperature=0, stream=True)
    assert [t for ch in s for t in (ch.choices[0].logprobs.tokens if ch.choices[0].logprobs else [])] == lp.tokens
