"""`/metrics` is valid Prometheus text with the numbers the issue asks for; `/health`
and `/` answer."""

from __future__ import annotations

import pytest

from localllm.server.metrics import Counter, Gauge, Histogram
from tests.server.conftest import wait_until
from tests.server.prometheus_text import parse


def scrape(http) -> dict:
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def value(families, name, **labels):
    family = name if name in families else name.rsplit("_", 1)[0]
    for sample, sample_labels, v in families[family]["samples"]:
        if sample == name and all(sample_labels.get(k) == str(x) for k, x in labels.items()):
            return v
    return 0.0


def test_metrics_parse_and_count_a_generation(http, model_name):
    before = scrape(http)
    r = http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 8, "temperature": 0,
                                                "messages": [{"role": "user", "content": "Once upon a time"}]})
    assert r.status_code == 200
    r = http.post("/api/generate", json={"model": model_name, "prompt": "Once upon a time", "stream": False,
                                         "options": {"num_predict": 4, "temperature": 0}})
    assert r.status_code == 200
    after = scrape(http)
    expected = {
        "localllm_http_requests_total": "counter", "localllm_generations_total": "counter",
        "localllm_queue_depth": "gauge", "localllm_requests_running": "gauge",
        "localllm_time_to_first_token_seconds": "histogram", "localllm_inter_token_latency_seconds": "histogram",
        "localllm_prompt_tokens_total": "counter", "localllm_generated_tokens_total": "counter",
        "localllm_prefix_cache_hits_total": "counter", "localllm_prefix_cache_tokens_total": "counter",
        "localllm_draft_tokens_total": "counter", "localllm_draft_accepted_tokens_total": "counter",
        "localllm_models_loaded": "gauge",
    }
    for name, kind in expected.items():
        assert after[name]["type"] == kind, name
        assert after[name]["help"], name
    assert value(after, "localllm_generated_tokens_total") - value(before, "localllm_generated_tokens_total") == 12
    assert (value(after, "localllm_generations_total", api="openai_chat", finish_reason="length")
            - value(before, "localllm_generations_total", api="openai_chat", finish_reason="length")) == 1
    assert (value(after, "localllm_time_to_first_token_seconds_count")
            - value(before, "localllm_time_to_first_token_seconds_count")) == 2
    assert value(after, "localllm_http_requests_total", route="/v1/chat/completions", method="POST", status=200) >= 1
    assert value(after, "localllm_models_loaded", state="ready") == 1
    assert value(after, "localllm_queue_depth") == 0


def test_the_same_prompt_again_is_a_prefix_cache_hit(http, model_name):
    body = {"model": model_name, "prompt": "The cat sat on the mat and looked at the", "max_tokens": 3}

    def counted(metrics) -> float:
        return value(metrics, "localllm_prefix_cache_hits_total") + value(metrics, "localllm_prefix_cache_misses_total")

    start = counted(scrape(http))
    http.post("/v1/completions", json=body)
    # A generation is counted when the engine lets go of it, which may come just after
    # its response: wait for it, so it is not counted as the second one's.
    wait_until(lambda: counted(scrape(http)) == start + 1)
    before = scrape(http)
    r = http.post("/v1/completions", json=body)
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    after = scrape(http)
    assert value(after, "localllm_prefix_cache_hits_total") == value(before, "localllm_prefix_cache_hits_total") + 1


def test_exposition_escapes_labels_and_help():
    c = Counter("x_total", 'help with \\ and\nnewline', ("path",))
    c.inc(path='a"b\\c\nd')
    g = Gauge("g", "a gauge")
    g.set(1.5)
    h = Histogram("h_seconds", "latency", (0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    text = "\n".join(c.header() + c.lines() + g.header() + g.lines() + h.header() + h.lines()) + "\n"
    families = parse(text)
    assert families["x_total"]["samples"][0][1] == {"path": 'a"b\\c\nd'}
    assert [v for n, _, v in families["h_seconds"]["samples"] if n == "h_seconds_bucket"] == [1, 2, 3]


@pytest.mark.parametrize("bad", ['x{a="1} 1\n', "x 1", "# TYPE x wrong\nx 1\n", "x{a=1} 2\n", "x one\n"])
def test_the_parser_rejects_malformed_text(bad):
    with pytest.raises((ValueError, IndexError)):
        parse(bad if bad.startswith("#") else "# TYPE x counter\n" + bad)


def test_health_and_root(http, model_name):
    h = http.get("/health").json()
    assert h["status"] == "ok" and h["queue_depth"] == 0
    assert {"name": model_name, "state": "ready", "requests": 0} in h["models"]
    assert http.get("/").text == "localllm is running"
