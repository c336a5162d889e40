"""Ollama's model management over the real registry: a model imported into a private
home is listed, shown, served by name, and deleted; pulls stream progress and stop when
their client goes away (the hub itself is replaced by a fake pull here)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from ollama import Client, ResponseError
from openai import OpenAI

from localllm.server.config import ServerConfig
from tests.server.conftest import server_settings, start_server, wait_until

NAME = "stories:260k"


@pytest.fixture(scope="module")
def reg(stories_path, tmp_path_factory):
    from localllm.registry import import_model

    settings = server_settings(tmp_path_factory.mktemp("registry-home"))
    import_model(stories_path, NAME, settings)
    running = start_server(ServerConfig(port=0), settings)
    yield running
    running.stop()


def test_tags_show_generate_by_name_ps_and_delete(reg):
    client = Client(host=reg.url, timeout=60)
    models = client.list().models
    assert [m.model for m in models] == [NAME]
    assert models[0].size > 1_000_000 and len(models[0].digest) == 64
    shown = client.show(NAME)
    assert shown.details.family == "llama" and shown.modelinfo["general.parameter_count"] > 0
    assert shown.template == ""  # a base model: no chat template

    r = client.generate(model=NAME, prompt="Once upon a time", options={"num_predict": 5, "temperature": 0})
    assert r.eval_count == 5
    assert [m.model for m in client.ps().models] == [NAME]
    with OpenAI(base_url=reg.url + "/v1", api_key="x", max_retries=0) as oa:
        assert NAME in [m.id for m in oa.models.list().data]

    client.delete(NAME)
    wait_until(lambda: client.ps().models == [])
    assert client.list().models == []
    with pytest.raises(ResponseError) as e:
        client.generate(model=NAME, prompt="x")
    assert e.value.status_code == 404


def fake_pull(name, settings, on_progress=None, cancel=None, **options):
    from localllm.registry import ModelEntry, PullCancelled, PullProgress

    on_progress(PullProgress("resolving"))
    total = 1000
    for done in range(0, total + 1, 250):
        on_progress(PullProgress("downloading", digest="ab" * 32, total=total, completed=done))
    if name == "slow:1b":  # a pull that only stops when cancelled
        fake_pull.started.set()
        if cancel.wait(20):
            fake_pull.cancelled.set()
            raise PullCancelled(f"pull of {name} cancelled")
    on_progress(PullProgress("success"))
    return ModelEntry(name, settings.models_dir / "x.gguf", total, "Q4_K_M", "gguf", time.time(), "ab" * 32)


fake_pull.started = threading.Event()
fake_pull.cancelled = threading.Event()


def test_pull_streams_progress_as_ndjson(reg, monkeypatch):
    import localllm.registry

    monkeypatch.setattr(localllm.registry, "pull_model", fake_pull)
    parts = list(Client(host=reg.url).pull("tiny:1b", stream=True))
    statuses = [p.status for p in parts]
    assert statuses[0] == "resolving" and statuses[-1] == "success"
    downloads = [p for p in parts if p.status == "downloading"]
    assert [p.completed for p in downloads] == [0, 250, 500, 750, 1000]
    assert all(p.total == 1000 and p.digest == "sha256:" + "ab" * 32 for p in downloads)
    assert Client(host=reg.url).pull("tiny:1b").status == "success"  # not streamed: one answer


def test_a_pull_stops_when_its_client_goes_away(reg, monkeypatch):
    import localllm.registry

    monkeypatch.setattr(localllm.registry, "pull_model", fake_pull)
    with httpx.Client(base_url=reg.url, timeout=30) as client:
        with client.stream("POST", "/api/pull", json={"model": "slow:1b"}) as r:
            lines = r.iter_lines()
            assert '"resolving"' in next(lines)
            assert fake_pull.started.wait(10)
    assert fake_pull.cancelled.wait(10)
