"""A model is never freed while a request still uses it: a client that gives up while
its prompt is being prepared, followed by a request for another model that needs the
room (`--max-loaded 1`), must not let the first model be closed under the thread that
is still tokenizing for it (this crashed the server with SIGSEGV in libllama).

The server runs in a subprocess (a crash is a dead process, not a dead test runner),
with a hook on model A's prompter that parks the preparing thread until the test lets
it go, so the race is reproduced every time rather than by luck."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import httpx

SERVER = r'''
import json, os, sys, time, threading
from pathlib import Path
import uvicorn
from localllm.config import Settings
from localllm.runtime import load_model
from localllm.server.app import create_app
from localllm.server.config import ServerConfig
from localllm.server.runner import bind_socket

flags = Path(sys.argv[1])
log = flags / "log"

def note(line):
    with open(log, "a") as f:
        f.write(line + "\n")

def loader(name, settings):
    model = load_model(name, settings)
    label = Path(name).stem
    if label == "a":
        real_encode, real_close = model.prompter.encode, model.close
        def encode(*args, **kw):
            (flags / "entered").touch()
            while not (flags / "release").exists():
                time.sleep(0.01)
            try:  # uses the vocabulary (freed memory if A were closed), or stops: it was cancelled
                return real_encode(*args, **kw)
            finally:
                note("left encode a")
        def close():
            note("closing a")
            real_close()
            note("closed a")
        model.prompter.encode, model.close = encode, close
    return model

home = flags / "home"
settings = Settings(home=home, cache_dir=home / "cache", ctx_size=256, threads=1)
app = create_app(ServerConfig(port=0, max_loaded=1, allow_model_paths=True), settings, loader=loader)
sock = bind_socket("127.0.0.1", 0)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
'''


def test_abandoned_request_keeps_its_model_until_its_thread_is_done(stories_path, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    shutil.copy(stories_path, a)
    shutil.copy(stories_path, b)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        body = json.dumps({"model": str(a), "messages": [{"role": "user", "content": "Once upon a time"}],
                           "max_tokens": 2}).encode()
        # Client 1 asks for model A, and leaves while A's prompt is being prepared.
        client = socket.create_connection(("127.0.0.1", port), timeout=60)
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 120
        while not (tmp_path / "entered").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        client.close()
        # Client 2 asks for model B, which needs A's room.
        answer: dict = {}

        def ask_b():
            answer["r"] = httpx.post(url + "/v1/completions", timeout=120, json={
                "model": str(b), "prompt": "Once", "max_tokens": 2, "temperature": 0})

        asker = threading.Thread(target=ask_b)
        asker.start()
        time.sleep(1.0)  # time for the server to see the disconnect and B's request
        health = httpx.get(url + "/health", timeout=30).json()
        assert [m["name"] for m in health["models"]] == [str(a)], health  # A still held, B waits
        (tmp_path / "release").touch()
        asker.join(timeout=120)
        assert answer["r"].status_code == 200, answer["r"].text
        assert proc.poll() is None
        log = (tmp_path / "log").read_text().split("\n")
        assert log.index("left encode a") < log.index("closing a"), log
        assert [m["name"] for m in httpx.get(url + "/health", timeout=30).json()["models"]] == [str(b)]
    finally:
        proc.terminate()
        err = proc.communicate(timeout=30)[1]
    assert proc.returncode in (0, -15), err  # terminated by us, not by a signal of its own
    assert "Segmentation" not in err and "Traceback" not in err, err
