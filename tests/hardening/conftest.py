"""Fixtures for the hardening tests: the real `localllm serve` in a subprocess (so a
crash is seen as a dead process, not a failed assertion inside it), and GGUF files
crafted byte by byte."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    url: str
    port: int

    def alive(self) -> bool:
        return self.proc.poll() is None

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=30).json()

    def stop(self) -> str:
        """Ctrl-C it and return its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1]


def start_serve(*args: str, env: dict | None = None, ready_model: bool = True) -> ServeProcess:
    """`localllm serve --port 0 ARGS` on 127.0.0.1; waits for its address (and for the
    preloaded model when `ready_model`)."""
    full_env = dict(os.environ, LOCALLLM_API_KEY="")
    full_env.update(env or {})
    proc = subprocess.Popen([sys.executable, "-m", "localllm", "serve", "--port", "0", "--threads", "1", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            text=True, env=full_env)
    line = proc.stderr.readline()
    m = re.search(r"serving on (http://127\.0\.0\.1:(\d+))", line)
    if not m:
        proc.kill()
        raise AssertionError(f"serve did not start: {line}{proc.communicate()[1]}")
    server = ServeProcess(proc, m.group(1), int(m.group(2)))
    if ready_model:
        deadline = time.monotonic() + 60
        while not any(s["state"] == "ready" for s in server.health()["models"]):
            assert server.alive() and time.monotonic() < deadline, "the model never became ready"
            time.sleep(0.05)
    return server


@pytest.fixture(scope="module")
def served(stories_path, tmp_path_factory):
    """One `localllm serve --model stories260K` for a module."""
    home = tmp_path_factory.mktemp("serve-home")
    server = start_serve("--model", str(stories_path), "--ctx-size", "256",
                         env={"LOCALLLM_HOME": str(home), "LOCALLLM_CONFIG": str(home / "config.toml")})
    yield server
    err = server.stop()
    assert "Traceback" not in err, err
