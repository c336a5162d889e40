"""Safe by default: loopback only unless a key is set, CORS allow-list (never *), Host
check against DNS rebinding, API key on every route but / and /health."""

from __future__ import annotations

import httpx
import openai
import pytest
from ollama import Client, ResponseError

from localllm.errors import UserError
from localllm.server.config import ServerConfig, is_loopback
from tests.server.conftest import server_settings, start_server


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8000", "https://localhost",
                                    "http://[::1]:5173", "vscode-webview://1a2b3c4d"])
def test_allowed_origins_are_echoed_never_star(http, origin):
    r = http.get("/api/version", headers={"Origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    assert "Origin" in r.headers["vary"]
    pre = http.options("/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "null",
                                    "http://192.168.1.5:3000", "vscode-webview://x/../../"])
def test_other_origins_are_refused_before_anything_runs(http, origin, model_name):
    r = http.post("/api/generate", headers={"Origin": origin}, json={"model": model_name, "prompt": "hi"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert "not allowed" in r.json()["error"]
    r = http.post("/v1/completions", headers={"Origin": origin}, json={"model": model_name, "prompt": "hi"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    pre = http.options("/v1/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 403


def test_dns_rebinding_host_is_refused(http):
    assert http.get("/api/version", headers={"Host": "attacker.example:11435"}).status_code == 403
    assert http.get("/api/version", headers={"Host": "localhost:11435"}).status_code == 200


def test_non_loopback_needs_a_key_and_star_is_refused():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.0.2")
    with pytest.raises(UserError, match="API key"):
        ServerConfig(host="0.0.0.0").validate()
    ServerConfig(host="0.0.0.0", api_key="k").validate()
    with pytest.raises(UserError, match="any web page"):
        ServerConfig(cors_origins=("*",)).validate()
    with pytest.raises(UserError):
        ServerConfig(cors_origins=("https://*.example.com",)).validate()


@pytest.fixture(scope="module")
def keyed(stories_path, tmp_path_factory):
    running = start_server(
        ServerConfig(port=0, preload=str(stories_path), api_key="sekret", cors_origins=("https://app.example",)),
        server_settings(tmp_path_factory.mktemp("keyed-home")))
    yield running
    running.stop()


def test_api_key_is_required(keyed, model_name):
    r = httpx.get(keyed.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.url + "/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(keyed.url + "/metrics").status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/api/tags", headers={"X-API-Key": "sekret"}).status_code == 200

    with openai.OpenAI(base_url=keyed.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=keyed.url + "/v1", api_key="sekret", max_retries=0) as good:
        r = good.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage.completion_tokens <= 3
    with pytest.raises(ResponseError) as e:
        Client(host=keyed.url).ps()
    assert e.value.status_code == 401
    assert Client(host=keyed.url, headers={"Authorization": "Bearer sekret"}).ps().models


def test_configured_origin_and_preflight_without_key(keyed):
    pre = httpx.options(keyed.url + "/api/chat", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.get(keyed.url + "/api/version", headers={"Origin": "https://other.example",
                                                       "Authorization": "Bearer sekret"})
    assert r.status_code == 403
