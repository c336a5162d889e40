"""llama-server's `/completion` shape on stories260K (text, token ids and mixed prompts,
streaming without [DONE], timings, n_predict, ignore_eos, response_fields, the default
model), its error shape, the 404 shape of each API, and the infill stopping rules
(n_indent, t_max_predict_ms)."""

from __future__ import annotations

import json

import pytest

from localllm.server.text_limits import InfillTextLimit
from localllm.types import SamplingParams

GREEDY = SamplingParams(temperature=0)
PROMPT = "Once upon a time"


def test_completion_text_matches_the_engine(http, direct_model):
    expected = direct_model.complete(PROMPT, GREEDY, max_tokens=20).text()
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 20, "temperature": 0})  # no model: the preloaded one
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["content"] == expected and body["stop"] is True and body["stop_type"] == "limit"
    assert body["tokens_predicted"] == 20
    assert body["tokens_evaluated"] == len(direct_model.text_tokens(PROMPT))
    t = body["timings"]
    assert t["predicted_n"] == 20 and t["prompt_n"] + t["cache_n"] == body["tokens_evaluated"]
    assert body["tokens_cached"] == body["tokens_evaluated"] + 20


def test_completion_token_ids_and_mixed_prompts(http, direct_model, model_name):
    tokens = direct_model.text_tokens(PROMPT)
    expected = direct_model.complete(PROMPT, GREEDY, max_tokens=8).text()
    for prompt in (tokens, [tokens[0], PROMPT]):  # ids; BOS id then text
        r = http.post("/completions", json={"model": model_name, "prompt": prompt, "n_predict": 8, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["content"] == expected and r.json()["tokens_evaluated"] == len(tokens)


def test_completion_stream_ends_with_stop_and_no_done(http, direct_model):
    expected = direct_model.complete(PROMPT, GREEDY, max_tokens=12).text()
    with http.stream("POST", "/completion", json={"prompt": PROMPT, "n_predict": 12, "temperature": 0,
                                                  "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == expected
    assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["timings"]["predicted_n"] == 12


def test_ignore_eos_and_prefill_only(http):
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 300, "temperature": 0, "ignore_eos": True})
    assert r.json()["tokens_predicted"] == 300  # stories260K ends its story well before that
    r = http.post("/completion", json={"prompt": PROMPT + " there", "n_predict": 0})
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 0 and r.json()["content"] == ""


def test_response_fields_flatten_nested_paths(http):
    r = http.post("/completion", json={"prompt": PROMPT, "n_predict": 2, "response_fields": ["content", "timings/predicted_n"]})
    assert set(r.json()) == {"content", "timings/predicted_n"} and r.json()["timings/predicted_n"] == 2


@pytest.mark.parametrize("body, field", [
    ({"prompt": PROMPT, "n_predict": "x"}, "n_predict"),
    ({"prompt": PROMPT, "n_probs": 3}, "n_probs"),
    ({"prompt": PROMPT, "grammar": "root ::= \"a\""}, "grammar"),
    ({"prompt": [PROMPT, PROMPT]}, "prompt"),
    ({"prompt": [10 ** 6]}, "prompt"),
    ({"prompt": PROMPT, "logit_bias": [["hello", 1]]}, "logit_bias"),
    ({}, "prompt"),
])
def test_bad_requests_get_llama_servers_error_shape(http, body, field):
    r = http.post("/completion", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error" and field in error["message"]


def test_unknown_paths_are_404_in_each_apis_shape(http):
    r = http.post("/v1/nothing", json={})
    assert r.status_code == 404 and "/v1/nothing" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/api/nothing", json={})
    assert r.status_code == 404 and "/api/nothing" in r.json()["error"]
    r = http.get("/infill")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_model_is_required_where_the_server_has_several(tmp_path, stories_path):
    import httpx

    from localllm.server.config import ServerConfig
    from tests.server.conftest import server_settings, start_server

    running = start_server(ServerConfig(port=0, allow_model_paths=True), server_settings(tmp_path))
    try:
        r = httpx.post(running.url + "/completion", json={"prompt": PROMPT, "n_predict": 2}, timeout=60)
        assert r.status_code == 400 and "'model' is required" in r.json()["error"]["message"]
        r = httpx.post(running.url + "/completion", json={"model": str(stories_path), "prompt": PROMPT, "n_predict": 2},
                       timeout=60)
        assert r.status_code == 200, r.text
    finally:
        running.stop()


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def feed_all(limit, pieces):
    out = "".join(limit.feed(p) for p in pieces)
    return out + limit.flush()


def test_n_indent_ends_at_the_first_line_less_indented():
    limit = InfillTextLimit(n_indent=4)
    text = feed_all(limit, ["x = 1\n    y", " = 2\n  ", " z = 3\n", "w = 4\n"])
    assert text == "x = 1\n    y = 2\n" and limit.stopped
    blank = InfillTextLimit(n_indent=4)
    assert feed_all(blank, ["a\n    b\n", "\n    c"]) == "a\n    b\n" and blank.stopped
    kept = InfillTextLimit(n_indent=2)
    assert feed_all(kept, ["a\n  b\n  ", "  "]) == "a\n  b\n    " and not kept.stopped


def test_t_max_predict_ms_ends_after_a_newline_once_time_is_up():
    clock = FakeClock()
    limit = InfillTextLimit(t_max_predict_ms=100, clock=clock)
    assert limit.feed("a") == "a"
    clock.t = 0.5
    assert limit.feed("b") == "b" and not limit.stopped  # no newline yet: keep going
    assert limit.feed("\nc") == "\nc" and limit.stopped
    assert limit.feed("more") == ""


def test_n_indent_cuts_a_real_reply_at_its_first_unindented_line(http, direct_model):
    full = direct_model.complete(PROMPT, GREEDY, max_tokens=200).text()
    assert "\n" in full
    for stream in (False, True):
        body = {"prompt": PROMPT, "n_predict": 200, "temperature": 0, "n_indent": 1, "stream": stream}
        if stream:
            with http.stream("POST", "/completion", json=body) as r:
                events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
            content, last = "".join(e["content"] for e in events), events[-1]
        else:
            last = http.post("/completion", json=body).json()
            content = last["content"]
        assert content == full[:full.index("\n") + 1]
        assert last["stop_type"] == "limit" and last["tokens_predicted"] < 200
