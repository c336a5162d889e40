"""Ollama's model management through the official `ollama` client against a real
server: list (details from the GGUF header), pull of a local name, copy, create (its
parameters and system prompt apply in both APIs; request values win), ps with full
names, and num_ctx as a load of its own."""

from __future__ import annotations

import httpx
import pytest
from ollama import Client, ResponseError
from openai import OpenAI

from localllm.server.config import ServerConfig
from localllm.types import SamplingParams
from tests.server.conftest import server_settings, start_server, wait_until

SYSTEM = "Lily had a cat."
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="module")
def running(stories_path, tmp_path_factory):
    from localllm.registry import import_model

    home = tmp_path_factory.mktemp("models-api-home")
    settings = server_settings(home)
    import_model(stories_path, "stories", settings)
    server = start_server(ServerConfig(port=0, max_loaded=2), settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(running):
    return Client(host=running.url, timeout=60)


def test_list_fills_details_from_the_header(client):
    (model,) = [m for m in client.list().models if m.model == "stories:latest"]
    d = model.details
    assert (d.format, d.family, d.families, d.parameter_size, d.quantization_level) == (
        "gguf", "llama", ["llama"], "292.8K", "F32")


def test_pull_of_an_imported_name_is_a_clear_answer(client):
    statuses = [p.status for p in client.pull("stories", stream=True)]
    assert any("is a local model (imported on this machine)" in s for s in statuses), statuses
    assert statuses[-1] == "success"
    assert client.pull("stories").status == "success"


def test_copy_then_create_with_parameters_and_system(client, direct_model, running):
    assert client.copy("stories", "tale").status == "success"
    with pytest.raises(ResponseError) as e:
        client.copy("no-such-model", "x")
    assert e.value.status_code == 404
    r = client.create(model="teller", from_="tale", system=SYSTEM,
                      parameters={"temperature": 0, "num_predict": 9, "stop": ["zebra"]})
    assert r.status == "success"
    shown = client.show("teller")
    assert "temperature" in shown.parameters and '"zebra"' in shown.parameters
    assert shown.details.family == "llama" and "PARAMETER num_predict 9" in shown.modelfile
    names = {m.model for m in client.list().models}
    assert {"stories:latest", "tale:latest", "teller:latest"} <= names

    # stories260K has no chat template: the system prompt leads the text.
    expected = direct_model.complete(f"{SYSTEM}\n\nOnce upon a time", GREEDY, max_tokens=9).text()
    g = client.generate(model="teller", prompt="Once upon a time")
    assert g.response == expected and g.eval_count == 9
    assert client.generate(model="teller", prompt="Once upon a time", options={"num_predict": 4}).eval_count == 4
    own_system = client.generate(model="teller", prompt="Once upon a time", system="A dog ran.")
    assert own_system.response == direct_model.complete("A dog ran.\n\nOnce upon a time", GREEDY,
                                                         max_tokens=9).text()
    with OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60) as openai:
        chat = openai.chat.completions.create(model="teller", messages=[{"role": "user", "content": "Hi"}])
        assert chat.usage.completion_tokens == 9  # num_predict applies; temperature 0 too:
        again = openai.chat.completions.create(model="teller", messages=[{"role": "user", "content": "Hi"}])
        assert again.choices[0].message.content == chat.choices[0].message.content
        short = openai.chat.completions.create(model="teller", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=2)
        assert short.usage.completion_tokens == 2


def test_create_refusals_are_400s(running):
    with httpx.Client(base_url=running.url, timeout=60) as http:
        cases = [
            ({"model": "x", "from": "stories", "adapters": {"a.gguf": "sha256:00"}}, "LoRA"),
            ({"model": "x", "from": "/tmp/some.gguf"}, "--allow-model-paths"),
            ({"model": "x", "from": "stories", "parameters": {"mirostat": 2}}, "mirostat"),
            ({"model": "x", "from": "stories", "template": "{{ .Prompt }}"}, "Go template"),
            ({"model": "x", "modelfile": "FROM stories\nADAPTER ./x.gguf\n"}, "ADAPTER"),
            ({"model": "x"}, "'from' is required"),
        ]
        for body, needle in cases:
            r = http.post("/api/create", json=body)
            assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
        r = http.post("/api/create", json={"model": "fromtext", "modelfile": "FROM stories\nPARAMETER top_k 5\n",
                                          "stream": False})
        assert r.status_code == 200 and r.json() == {"status": "success"}


def test_ps_names_models_fully_and_num_ctx_is_a_load_of_its_own(client, running):
    client.generate(model="stories", prompt="Once", options={"num_predict": 2})
    loaded = {(m.name, m.context_length) for m in client.ps().models}
    assert ("stories:latest", 1024) in loaded
    client.generate(model="stories", prompt="Once", options={"num_predict": 2, "num_ctx": 256})
    loaded = {(m.name, m.context_length) for m in client.ps().models}
    assert {("stories:latest", 1024), ("stories:latest", 256)} <= loaded
    client.generate(model="stories", prompt="Once", options={"num_predict": 2, "num_ctx": 256})
    assert len(running.state.models.slots()) == 2  # the same size again shares that load
    client.generate(model="stories", keep_alive=0)
    wait_until(lambda: len(running.state.models.slots()) <= 1)
