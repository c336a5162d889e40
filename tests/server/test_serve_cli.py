"""`localllm serve` as a user runs it: a subprocess that says where it listens, answers,
refuses unsafe or impossible setups with one line and exit 2, and stops on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import run_cli


def test_serve_starts_answers_and_stops_on_ctrl_c(stories_path, isolated_home):
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "serve", "--port", "0", "--model", str(stories_path), "--ctx-size", "256"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=dict(os.environ))
    try:
        line = proc.stderr.readline()
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)
        assert m, line
        url = m.group(1)
        for _ in range(200):
            health = httpx.get(url + "/health").json()
            if health["models"] and health["models"][0]["state"] == "ready":
                break
        r = httpx.post(url + "/v1/completions", json={"model": str(stories_path), "prompt": "Once", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130, out  # the CLI's Ctrl-C exit code, after a clean shutdown
    assert "Traceback" not in out


@pytest.mark.parametrize("args,needle", [
    (["--host", "0.0.0.0"], "API key"),
    (["--cors-origin", "*"], "any web page"),
    (["--keep-alive", "soon"], "--keep-alive"),
    (["--model", "/nonexistent/model.gguf"], "model.gguf"),
    (["--model", "no-such-model:1b"], "no-such-model"),
])
def test_serve_refuses_with_one_line(args, needle, isolated_home):
    r = run_cli("serve", "--port", "0", *args, env={"LOCALLLM_API_KEY": ""}, timeout=60)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_busy_port_is_one_clear_error(isolated_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_cli("serve", "--port", str(port), timeout=60)
    assert r.returncode == 2 and f"port {port}" in r.stderr and "in use" in r.stderr


def test_another_address_with_a_key_warns(isolated_home):
    proc = subprocess.Popen([sys.executable, "-m", "localllm", "serve", "--host", "0.0.0.0", "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, LOCALLLM_API_KEY="k"))
    try:
        first = proc.stderr.readline()
        assert "warning" in first and "0.0.0.0" in first and "API key" in first
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 130
