"""Models load on demand in a thread (other endpoints keep answering), one at a time by
default, and unload after their keep-alive or on Ollama's `keep_alive: 0`."""

from __future__ import annotations

import shutil
import threading

import httpx
import pytest

from localllm.server.config import DurationError, ServerConfig, parse_duration
from tests.server.conftest import server_settings, start_server, wait_until

gate = threading.Event()
gate.set()
load_calls: list[str] = []


def gated_loader(name, settings):
    from localllm.runtime import load_model

    load_calls.append(name)
    if not gate.wait(30):
        raise RuntimeError("test gate never opened")
    if name.endswith("broken.gguf"):
        raise RuntimeError("simulated load failure")
    return load_model(name, settings)


@pytest.fixture(scope="module")
def two_models(stories_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    a, b, broken = folder / "a.gguf", folder / "b.gguf", folder / "broken.gguf"
    for p in (a, b, broken):
        shutil.copy(stories_path, p)
    return str(a), str(b), str(broken)


@pytest.fixture(scope="module")
def lazy(tmp_path_factory):
    running = start_server(ServerConfig(port=0, keep_alive_s=300.0, allow_model_paths=True),
                           server_settings(tmp_path_factory.mktemp("lazy-home")), loader=gated_loader)
    yield running
    running.stop()


def loaded(server) -> dict[str, str]:
    return {m["name"]: m["state"] for m in httpx.get(server.url + "/health").json()["models"]}


def generate(server, model, **extra):
    return httpx.post(server.url + "/api/generate", timeout=60, json={
        "model": model, "prompt": "Once upon a time", "stream": False,
        "options": {"num_predict": 5, "temperature": 0}} | extra)


def test_other_endpoints_answer_while_a_model_loads(lazy, two_models):
    a, _, _ = two_models
    gate.clear()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=generate(lazy, a)))
    t.start()
    try:
        wait_until(lambda: loaded(lazy).get(a) == "loading")
        assert httpx.get(lazy.url + "/api/version").status_code == 200
        assert httpx.get(lazy.url + "/v1/models").status_code == 200
        assert httpx.get(lazy.url + "/metrics").status_code == 200
    finally:
        gate.set()
    t.join(60)
    assert result["r"].status_code == 200
    body = result["r"].json()
    assert body["eval_count"] == 5 and body["load_duration"] > 0  # this request waited for the load
    assert loaded(lazy) == {a: "ready"}


def test_one_model_at_a_time_evicts_the_idle_one(lazy, two_models):
    a, b, _ = two_models
    assert generate(lazy, a).status_code == 200
    assert generate(lazy, b).status_code == 200
    wait_until(lambda: loaded(lazy) == {b: "ready"})
    ps = httpx.get(lazy.url + "/api/ps").json()["models"]
    assert [m["name"] for m in ps] == [b]


def test_keep_alive_unloads_after_its_time(lazy, two_models):
    a, _, _ = two_models
    assert generate(lazy, a, keep_alive="300ms").status_code == 200
    wait_until(lambda: a not in loaded(lazy), timeout=10)


def test_keep_alive_zero_and_empty_prompt(lazy, two_models):
    a, _, _ = two_models
    r = httpx.post(lazy.url + "/api/generate", json={"model": a}, timeout=60)
    assert r.json()["done_reason"] == "load" and loaded(lazy) == {a: "ready"}
    r = httpx.post(lazy.url + "/api/chat", json={"model": a, "messages": [], "keep_alive": 0}, timeout=60)
    assert r.json()["done_reason"] == "unload"
    wait_until(lambda: loaded(lazy) == {})
    assert generate(lazy, a, keep_alive=0).status_code == 200
    wait_until(lambda: loaded(lazy) == {})


def test_a_failed_load_is_a_clear_500_and_is_retried(lazy, two_models):
    _, _, broken = two_models
    calls = len(load_calls)
    for _ in range(2):
        r = httpx.post(lazy.url + "/v1/completions", json={"model": broken, "prompt": "x"}, timeout=60)
        assert r.status_code == 500
        assert "could not load model" in r.json()["error"]["message"]
    assert len(load_calls) == calls + 2
    assert broken not in loaded(lazy)


def test_parse_duration():
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25 and parse_duration(10) == 10 and parse_duration("42") == 42
    assert parse_duration(-1) is None and parse_duration("-1m") is None and parse_duration("0") == 0
    for bad in ("soon", "5 m", "", True, [1], "1d"):
        with pytest.raises(DurationError):
            parse_duration(bad)
