"""Hostile chat templates: numbers of billions of digits, loops of loops, a prompt of
600 MB, strings doubled until memory runs out. Through the real CLI each is exit 2 and
one line within the render budget; through a real server each is a 400 while /health
keeps answering (the render runs in another process, not under the server's GIL)."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.conftest import run_cli
from tests.hardening.conftest import start_serve

HOSTILE = {
    "huge power": "{{ 10**(10**10) }}",
    "huge product": "{{ 'x' * 10**12 }}",
    "product of huge numbers": "{{ (7**4000) * (7**4000) * (7**4000) }}",
    "loops of loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "600 MB prompt": "{% for i in range(100000) %}{{ 'x' * 6000 }}{% endfor %}",
    "doubling string": "{% set ns = namespace(x='ab') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}"
                       "{% endfor %}{{ ns.x|length }}",
    "huge center": "{{ 'a'.center(2000000000) }}",
    "deep nesting": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
    "escape attempt": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("templates")
    paths = {}
    for i, (name, text) in enumerate(HOSTILE.items()):
        paths[name] = folder / f"{i}.jinja"
        paths[name].write_text(text)
    return paths


@pytest.mark.slow
def test_run_refuses_each_with_one_line(templates, stories_path, isolated_home):
    for name, path in templates.items():
        r = run_cli("run", str(stories_path), "hi", "--chat-template", str(path), "--threads", "1",
                    "--max-tokens", "2", timeout=60)  # a hang fails here
        assert r.returncode == 2, f"{name}: {r.returncode} {r.stderr[-500:]}"
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and ("chat template" in lines[0] or "--chat-template" in lines[0]) and "Traceback" not in r.stderr, (name, r.stderr)


def test_server_answers_health_while_a_template_burns(templates, stories_path, isolated_home):
    server = start_serve("--model", str(stories_path), "--ctx-size", "128", "--chat-template",
                         str(templates["loops of loops"]))
    try:
        result = {}

        def chat():
            result["r"] = httpx.post(server.url + "/v1/chat/completions", timeout=120, json={
                "model": str(stories_path), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

        asker = threading.Thread(target=chat)
        asker.start()
        answered = 0
        while asker.is_alive():
            assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
            answered += 1
            asker.join(timeout=0.2)
        assert answered >= 2  # /health answered while the render ran
        assert result["r"].status_code == 400, result["r"].text
        assert "took more than" in result["r"].json()["error"]["message"]
        assert server.alive()
    finally:
        assert "Traceback" not in server.stop()
