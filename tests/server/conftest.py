"""Fixtures for the server tests: the real app under uvicorn in a thread, on 127.0.0.1
and a free port, serving stories260K; and a directly loaded model to compare with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from localllm.config import Settings

CTX = 1024


def server_settings(home: Path, ctx_size: int = CTX) -> Settings:
    return Settings(home=home, cache_dir=home / "cache", ctx_size=ctx_size, threads=1)


@dataclass
class RunningServer:
    url: str
    app: object
    uvicorn_server: object
    thread: threading.Thread

    @property
    def state(self):
        return self.app.state.server

    def stop(self) -> None:
        self.uvicorn_server.should_exit = True
        self.thread.join(timeout=15)


def start_server(config, settings, *, loader=None, resolver=None) -> RunningServer:
    import uvicorn

    from localllm.server.app import create_app
    from localllm.server.runner import bind_socket

    app = create_app(config, settings, loader=loader, resolver=resolver)
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return RunningServer(f"http://127.0.0.1:{port}", app, server, thread)


def start_named_server(paths: dict, home: Path, **config) -> RunningServer:
    """A server whose model names stand for the given files, without a registry."""
    from localllm.errors import UserError
    from localllm.runtime import load_model
    from localllm.server.config import ServerConfig

    def resolver(name, settings):
        if name not in paths:
            raise UserError(f"model '{name}' not found")
        return paths[name]

    def loader(name, settings):
        return load_model(str(paths[name]), settings)

    return start_server(ServerConfig(port=0, **config), server_settings(home), resolver=resolver, loader=loader)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll `predicate` until it is truthy; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


@pytest.fixture(scope="session")
def model_name(stories_path) -> str:
    return str(stories_path)


@pytest.fixture(scope="session")
def server(stories_path, tmp_path_factory):
    """One shared server with stories260K preloaded (bounded queue of 8)."""
    from localllm.server.config import ServerConfig

    home = tmp_path_factory.mktemp("server-home")
    running = start_server(ServerConfig(port=0, preload=str(stories_path), max_queue=8), server_settings(home))
    wait_until(lambda: any(s.state == "ready" for s in running.state.models.slots()), timeout=60)
    yield running
    running.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def direct_model(stories_path, tmp_path_factory):
    """stories260K loaded in-process, for 'same text as the engine' comparisons."""
    from localllm.runtime import load_model

    model = load_model(str(stories_path), server_settings(tmp_path_factory.mktemp("direct-home")))
    yield model
    model.close()
