"""`localllm ps` and `localllm stop MODEL` through the real CLI against a real server."""

from __future__ import annotations

import socket

import pytest

from conftest import run_cli
from localllm.server.config import ServerConfig
from tests.server.conftest import server_settings, start_server, wait_until


@pytest.fixture
def running(stories_path, tmp_path):
    from localllm.registry import import_model

    settings = server_settings(tmp_path / "home")
    import_model(stories_path, "stories", settings)
    server = start_server(ServerConfig(port=0, keep_alive_s=600.0), settings)
    yield server
    server.stop()


def test_ps_lists_loaded_models_and_stop_unloads_one(running, isolated_home):
    host = running.url.removeprefix("http://")
    empty = run_cli("ps", "--host", host)
    assert empty.returncode == 0 and empty.stdout.split() == ["NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]

    import httpx

    httpx.post(running.url + "/api/generate", json={"model": "stories", "prompt": "Once", "stream": False,
                                                    "options": {"num_predict": 2}}, timeout=60)
    listed = run_cli("ps", "--host", host)
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1]
    assert row.startswith("stories:latest") and "100% CPU" in row and "1024" in row
    assert "minutes from now" in row or "minute from now" in row

    missing = run_cli("stop", "nothing-loaded", "--host", host)
    assert missing.returncode == 2 and "nothing-loaded is not loaded" in missing.stderr
    stopped = run_cli("stop", "stories", "--host", host)
    assert stopped.returncode == 0 and "stopped stories:latest" in stopped.stdout
    wait_until(lambda: not running.state.models.slots())
    assert len(run_cli("ps", "--host", host).stdout.splitlines()) == 1


def test_ps_without_a_server_says_how_to_start_one(isolated_home):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("ps", "--host", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "no localllm server answers" in r.stderr and "localllm serve" in r.stderr
