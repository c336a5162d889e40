"""Raw HTTP: every bad request gets a clear 4xx in its API's error shape, never a 500
or a hang. OpenAI: {"error": {"message", "type", "param", "code"}}; Ollama: {"error": "..."}."""

from __future__ import annotations

import json

import pytest



def openai_error(r, status):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
    return err


def ollama_error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    return body["error"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_openai(http, path):
    err = openai_error(http.post(path, content=b'{"model": "x", "messages": [}'), 400)
    assert "not valid JSON" in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate", "/api/show", "/api/pull"])
def test_malformed_json_ollama(http, path):
    assert "not valid JSON" in ollama_error(http.post(path, content=b"{nope"), 400)


def test_body_must_be_an_object(http):
    assert "JSON object" in openai_error(http.post("/v1/chat/completions", json=[1, 2]), 400)["message"]
    assert "empty" in ollama_error(http.post("/api/chat", content=b""), 400)


@pytest.mark.parametrize("body,param", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": 5, "messages": []}, "model"),
    ({"model": "m", "messages": "hello"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": True}, "seed"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 500}}, "logit_bias.5"),
])
def test_wrong_types_openai(http, body, param):
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == param, err


@pytest.mark.parametrize("body,needle", [
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "warm"}},
     "options.temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "options": []}, "options"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "keep_alive": "soon"}, "keep_alive"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": 1}, "stream"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}, "format"),
    ({"model": "m", "messages": {"role": "user"}}, "messages"),
])
def test_wrong_types_ollama(http, body, needle):
    assert needle in ollama_error(http.post("/api/chat", json=body), 400)


def test_n_other_than_one_is_refused(http, model_name):
    body = {"model": model_name, "messages": [{"role": "user", "content": "hi"}], "n": 2}
    err = openai_error(http.post("/v1/chat/completions", json=body), 400)
    assert err["param"] == "n" and "n=1" in err["message"]
    body = {"model": model_name, "prompt": "hi", "n": 2}
    assert openai_error(http.post("/v1/completions", json=body), 400)["param"] == "n"


def test_unsupported_features_are_refused_not_ignored(http, model_name):
    base = {"model": model_name, "messages": [{"role": "user", "content": "hi"}]}
    for extra, param in [({"functions": [{"name": "f"}]}, "functions"),
                         ({"top_logprobs": 2}, "top_logprobs"),
                         ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
                         ({"tool_choice": "required"}, "tool_choice"),
                         ({"response_format": {"type": "yaml"}}, "response_format.type")]:
        assert openai_error(http.post("/v1/chat/completions", json=base | extra), 400)["param"] == param
    image = {"model": model_name, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    assert "only text" in openai_error(http.post("/v1/chat/completions", json=image), 400)["message"]


def test_unknown_model(http):
    body = {"model": "no-such-model:1b", "messages": [{"role": "user", "content": "hi"}]}
    err = openai_error(http.post("/v1/chat/completions", json=body), 404)
    assert err["code"] == "model_not_found" and "no-such-model:1b" in err["message"]
    assert "no-such-model:1b" in ollama_error(http.post("/api/generate", json={"model": "no-such-model:1b",
                                                                               "prompt": "x"}), 404)
    assert ollama_error(http.post("/api/chat", json=body | {"stream": True}), 404)
    openai_error(http.get("/v1/models/no-such-model:1b"), 404)


def test_oversized_body(http, server):
    limit = server.state.config.max_body_bytes
    big = json.dumps({"model": "m", "prompt": "x" * (limit + 10)}).encode()
    err = openai_error(http.post("/v1/completions", content=big), 413)
    assert str(limit) in err["message"]
    assert str(limit) in ollama_error(http.post("/api/generate", content=big), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(0, len(big), 65536):
            yield b"x" * 65536

    assert ollama_error(http.post("/api/generate", content=chunks()), 413)


@pytest.fixture
def CTX(server):
    return server.state.settings.ctx_size


def test_over_long_prompt_names_the_numbers(http, model_name, CTX):
    prompt = "Once upon a time there was a cat. " * 200
    err = openai_error(http.post("/v1/completions", json={"model": model_name, "prompt": prompt}), 400)
    assert err["code"] == "context_length_exceeded"
    assert f"holds {CTX}" in err["message"]
    msg = ollama_error(http.post("/api/chat", json={"model": model_name, "messages": [
        {"role": "user", "content": prompt}]}), 400)
    assert str(CTX) in msg and "tokens" in msg


def test_prompt_plus_max_tokens_beyond_context(http, model_name, direct_model, CTX):
    prompt = "Once upon a time there was a cat. " * 20
    n = len(direct_model.text_tokens(prompt))
    body = {"model": model_name, "prompt": prompt, "max_tokens": CTX - n + 1}
    err = openai_error(http.post("/v1/completions", json=body), 400)
    assert err["param"] == "max_tokens"
    assert f"{n} tokens" in err["message"] and f"{CTX + 1} exceeds the context of {CTX}" in err["message"]
    assert f"at most {CTX - n}" in err["message"]
    ok = http.post("/v1/completions", json=body | {"max_tokens": CTX - n, "temperature": 0})
    assert ok.status_code == 200
    msg = ollama_error(http.post("/api/generate", json={"model": model_name, "prompt": prompt, "raw": True,
                                                       "options": {"num_predict": CTX}}), 400)
    assert "num_predict" in msg and str(CTX) in msg


def test_suffix_without_fim_tokens_is_refused_clearly(http, model_name):
    body = {"model": model_name, "prompt": "def f(", "suffix": "    return x\n"}
    err = openai_error(http.post("/v1/completions", json=body), 400)
    assert err["param"] == "suffix" and "fill-in-the-middle" in err["message"]
    assert "fill-in-the-middle" in ollama_error(http.post("/api/generate", json=body | {"stream": False}), 400)


def test_token_ids_outside_the_vocabulary(http, model_name):
    err = openai_error(http.post("/v1/completions", json={"model": model_name, "prompt": [1, 10**6]}), 400)
    assert "vocabulary" in err["message"]
    err = openai_error(http.post("/v1/chat/completions", json={
        "model": model_name, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999": -100}}), 400)
    assert err["param"] == "logit_bias"


def test_unknown_route_and_method(http):
    missing = openai_error(http.get("/v1/nothing"), 404)
    assert missing["code"] == "not_found" and "/v1/nothing" in missing["message"]
    assert openai_error(http.get("/v1/embeddings"), 405)["code"] == "method_not_allowed"
    assert ollama_error(http.get("/api/nothing"), 404)
    assert ollama_error(http.get("/api/chat"), 405)


@pytest.fixture(scope="module")
def dropping(stories_path, tmp_path_factory):
    from dataclasses import replace

    from localllm.server.config import ServerConfig
    from tests.server.conftest import server_settings, start_server

    settings = replace(server_settings(tmp_path_factory.mktemp("drop-home"), ctx_size=256), overflow="drop-oldest")
    running = start_server(ServerConfig(port=0, preload=str(stories_path)), settings)
    yield running
    running.stop()


def test_drop_oldest_policy_says_what_it_dropped(dropping, model_name):
    turn = "Once upon a time there was a cat who liked to play. " * 3
    messages = []
    for _ in range(6):
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "What happened next?"})
    import httpx

    r = httpx.post(dropping.url + "/v1/chat/completions", timeout=60,
                   json={"model": model_name, "messages": messages, "max_tokens": 16})
    assert r.status_code == 200, r.text
    assert int(r.headers["x-localllm-dropped-messages"]) >= 2
    assert r.json()["usage"]["prompt_tokens"] + 16 <= 256
