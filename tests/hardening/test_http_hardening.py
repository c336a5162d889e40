"""A real `localllm serve` against hostile clients: Host headers that only look local
(DNS rebinding), bodies nested 100,000 deep, integers of 5,000 digits, lone surrogates,
100,000 messages, file paths as `model`, and seeded random JSON at every endpoint. Every
answer is a 4xx in the API's own shape and the process stays up."""

from __future__ import annotations

import json
import random
import socket

import httpx
import pytest

from localllm.server.errors import LLAMA_SERVER_PATHS

from tests.hardening.conftest import start_serve


def raw_status(port: int, request: bytes) -> int:
    """Send raw HTTP bytes (headers an HTTP library would refuse to write) and read the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("host", [
    "127.evil.example", "127.0.0.1.nip.io", "127.0.0.1@evil.example", "127.0.0.1.evil.example:11435",
    "localhost.evil.example", "evil.example", "127.1", "[::1].evil", "", "127.0.0.1:80:80", "[127.0.0.1]",
    "0x7f.0.0.1", "127.0.0.1 evil.example",
])
def test_host_that_only_looks_local_is_refused(served, host):
    status = raw_status(served.port, f"GET /api/tags HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert status in (400, 403), host
    status = raw_status(served.port, (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        "Content-Length: 2\r\nConnection: close\r\n\r\n{}").encode())
    assert status in (400, 403), host


@pytest.mark.parametrize("host", ["localhost", "localhost:11435", "127.0.0.1", "127.0.0.2:8080", "[::1]:11435",
                                  "LOCALHOST:1"])
def test_loopback_hosts_are_served(served, host):
    assert raw_status(served.port, f"GET /api/version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()) == 200


def test_allowed_host_flag(stories_path, isolated_home):
    server = start_serve("--allowed-host", "my.box", ready_model=False)
    try:
        get = "GET /api/version HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n"
        assert raw_status(server.port, get.format("my.box:11435").encode()) == 200
        assert raw_status(server.port, get.format("my.box.evil").encode()) == 403
    finally:
        server.stop()


def openai_error(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def deep(n: int) -> bytes:
    return b'{"model": "m", "messages": ' + b"[" * n + b"]" * n + b"}"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/api/show", "/api/generate"])
def test_malformed_bodies_are_400(served, path):
    with httpx.Client(base_url=served.url, timeout=60) as http:
        bodies = [
            deep(100_000), deep(65), b'{"model": ' + b"9" * 5000 + b"}", b'{"model": "m", "seed": ' + b"9" * 400 + b"}",
            b'{"model": "m", "temperature": 1' + b"0" * 400 + b"}", b'{"model": "\\ud800"}',
            b'{"model": "m", "messages": [{"role": "user", "content": "hi \\udfff"}], "prompt": "\\udc80"}',
            b'{"\\ud800": 1}', b'{"model": "m", "temperature": NaN}', b'{"model": "m", "top_p": Infinity}',
        ]
        for body in bodies:
            r = http.post(path, content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (path, body[:80], r.status_code, r.text[:200])
            error = r.json()["error"]
            assert isinstance(error, dict) if path.startswith("/v1") else isinstance(error, str)
    assert served.alive() and served.health()["status"] == "ok"


def test_too_many_messages_is_400(served, stories_path):
    messages = [{"role": "user", "content": "a"}] * 100_000
    with httpx.Client(base_url=served.url, timeout=60) as http:
        err = openai_error(http.post("/v1/chat/completions", json={"model": str(stories_path), "messages": messages}))
        assert err["param"] == "messages" and "at most" in err["message"]
        r = http.post("/api/chat", json={"model": str(stories_path), "messages": messages, "stream": False})
        assert r.status_code == 400 and "at most" in r.json()["error"]


@pytest.mark.parametrize("model", ["/etc/passwd", "/etc", "/nonexistent/x.gguf", "../../x.gguf", "~/.ssh/id_rsa"])
def test_paths_are_404_without_touching_the_filesystem(served, model):
    with httpx.Client(base_url=served.url, timeout=60) as http:
        err = openai_error(http.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}]}), 404)
        # The same answer for files that exist and files that do not, and nothing read from them.
        assert "--allow-model-paths" in err["message"] and "root" not in err["message"]
        r = http.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False})
        assert r.status_code == 404 and "--allow-model-paths" in r.json()["error"]


def test_the_preloaded_path_and_allowed_paths_still_work(served, stories_path, tmp_path):
    with httpx.Client(base_url=served.url, timeout=60) as http:
        r = http.post("/v1/completions", json={"model": str(stories_path), "prompt": "Once", "max_tokens": 2})
        assert r.status_code == 200
    server = start_serve("--allow-model-paths", "--ctx-size", "128", ready_model=False,
                         env={"LOCALLLM_HOME": str(tmp_path / "home")})
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            r = http.post("/v1/completions", json={"model": str(stories_path), "prompt": "Once", "max_tokens": 2})
            assert r.status_code == 200, r.text
            # A folder or a system file is a 400 that says so, never a 500.
            for bad in (str(tmp_path), "/etc/hostname"):
                r = http.post("/v1/completions", json={"model": bad, "prompt": "Once", "max_tokens": 2})
                assert 400 <= r.status_code < 500, r.text
    finally:
        assert "Traceback" not in server.stop()


# -- fuzz: seeded random JSON at every route --------------------------------------------

FIELDS = ["model", "messages", "prompt", "stream", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
          "options", "keep_alive", "suffix", "role", "content", "name", "format", "raw", "system", "template",
          "logit_bias", "stream_options", "response_format", "num_predict", "images", "tools", "echo", "insecure"]


def random_value(rng: random.Random, model: str, depth: int = 0):
    kind = rng.randrange(12 if depth < 4 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, 10**30, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1e308, -1e-308, 3.5, rng.random() * 10])
    if kind == 4:
        return rng.choice(["", "user", "assistant", "system", "x" * rng.randrange(300), "\u0000", "<|im_end|>",
                           "{{ 7*7 }}", "../../etc/passwd", "é漢字🙂", model, "5m", "-1", "json"])
    if kind in (5, 6):
        return model if rng.random() < 0.5 else rng.choice(["nope:1b", "hf.co/x/y", ":", "a" * 300])
    if kind in (7, 8):
        return [random_value(rng, model, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 9:
        return [{"role": rng.choice(["user", "system", "assistant", "tool", "bad role", 3]),
                 "content": random_value(rng, model, depth + 1)} for _ in range(rng.randrange(1, 4))]
    return {rng.choice(FIELDS): random_value(rng, model, depth + 1) for _ in range(rng.randrange(5))}


def random_body(rng: random.Random, model: str) -> dict:
    body = {key: random_value(rng, model) for key in rng.sample(FIELDS, rng.randrange(1, 8))}
    if rng.random() < 0.6:
        body["model"] = model
    if "max_tokens" in body or rng.random() < 0.5:
        body["max_tokens"] = rng.choice([1, 2, 3])  # keep real generations short
    body.setdefault("options", {"num_predict": 3})
    return body


def app_routes() -> list[tuple[str, str]]:
    from pathlib import Path

    from localllm.config import Settings
    from localllm.server.app import create_app
    from localllm.server.config import ServerConfig

    app = create_app(ServerConfig(), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent")))
    return sorted({(route.path, method) for route in app.routes for method in route.methods if method != "HEAD"})


@pytest.mark.slow
def test_fuzz_random_json_at_every_endpoint(served, stories_path):
    rng = random.Random(1616)
    routes = app_routes()
    assert ("/v1/chat/completions", "POST") in routes and ("/api/chat", "POST") in routes
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=served.url, timeout=120) as http:
        for i in range(400):
            path, method = routes[i % len(routes)]
            path = path.replace("{name:path}", rng.choice(["x", "..%2F..", str(stories_path), "a/b:c"]))
            if path == "/api/pull":  # a pull would go to the network: only its parsing is fuzzed
                body = {"model": rng.choice([None, 3, "", ":", "../x", "\\ud800"]), "stream": False}
            else:
                body = random_body(rng, str(stories_path))
            raw = json.dumps(body).encode() if rng.random() < 0.9 else json.dumps(body).encode()[: rng.randrange(1, 40)]
            r = http.request(method, path, content=raw, headers={"Content-Type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500 or r.status_code == 503, (path, body, r.status_code, r.text[:300])
            if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
                error = r.json()["error"]
                as_object = path.startswith("/v1") or path in LLAMA_SERVER_PATHS  # OpenAI's, llama-server's
                assert isinstance(error, dict) if as_object else isinstance(error, str)
    assert served.alive() and served.health()["status"] == "ok"
    assert statuses.get(200, 0) > 10 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 100, statuses
