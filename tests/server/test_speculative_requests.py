"""Speculative decoding per request in both API shapes: the same text with any `draft`,
drafts counted in /metrics, bad values a 400 in the API's own error shape."""

from __future__ import annotations

import pytest

from tests.server.test_metrics_and_health import scrape, value

PROMPT = "Tim had a red ball. He liked to play with his red ball. One day, Tim"


def openai_text(http, model_name, **draft):
    r = http.post("/v1/completions", json={"model": model_name, "prompt": PROMPT, "max_tokens": 60,
                                           "temperature": 0, **draft})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def ollama_text(http, model_name, **draft):
    r = http.post("/api/generate", json={"model": model_name, "prompt": PROMPT, "stream": False, "raw": True,
                                         "options": {"num_predict": 60, "temperature": 0, **draft}})
    assert r.status_code == 200, r.text
    return r.json()["response"]


def drafted(http) -> tuple[float, float]:
    m = scrape(http)
    return value(m, "localllm_draft_tokens_total"), value(m, "localllm_draft_accepted_tokens_total")


@pytest.mark.parametrize("ask", [openai_text, ollama_text], ids=["openai", "ollama"])
def test_draft_per_request_same_text_and_counted(http, model_name, ask):
    d0, a0 = drafted(http)
    plain = ask(http, model_name, draft="none")
    d1, a1 = drafted(http)
    assert (d1, a1) == (d0, a0)  # none drafts nothing
    spec = ask(http, model_name, draft="prompt-lookup", draft_max=6, draft_ngram=2)
    d2, a2 = drafted(http)
    assert spec == plain
    assert d2 > d1 and a2 > a1


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "draft": "fast"}, "draft"),
    ("/v1/completions", {"prompt": "hi", "draft_max": 0}, "draft_max"),
    ("/v1/completions", {"prompt": "hi", "draft_ngram": "3"}, "draft_ngram"),
])
def test_bad_draft_fields_are_openai_400s(http, model_name, path, body, param):
    r = http.post(path, json={"model": model_name, **body})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == param and param in error["message"]


@pytest.mark.parametrize("options,field", [({"draft": "sometimes"}, "options.draft"),
                                           ({"draft_max": 100}, "options.draft_max")])
def test_bad_draft_options_are_ollama_400s(http, model_name, options, field):
    r = http.post("/api/generate", json={"model": model_name, "prompt": "hi", "stream": False, "options": options})
    assert r.status_code == 400
    assert field in r.json()["error"]
