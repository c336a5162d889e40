"""Embeddings end to end: vectors equal llama-cpp-python's own for the same model and
pooling (mean, CLS, last; a causal llama and a bidirectional BERT), through the server's
OpenAI and Ollama shapes, the official clients, LangChain and litellm, the `embed`
command, and while a chat stream runs on the same model in the same server."""

from __future__ import annotations

import base64
import json
import threading

import httpx
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.server.conftest import server_settings, start_named_server, wait_until

TEXTS = ["Once upon a time there was a little cat.", "The dog ran to the park.",
         "Lily liked to play with her friends every day, and they sat on the mat."]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def reference(embedding_models):
    """llama-cpp-python's own embeddings of TEXTS (raw, as `Llama.embed` gives them)."""
    import llama_cpp

    cache = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            llm = llama_cpp.Llama(model_path=str(embedding_models[name]), embedding=True, n_ctx=512,
                                  n_threads=1, verbose=False)
            cache[name] = np.array(llm.embed(TEXTS))
            llm.close()
        return cache[name]

    return get


@pytest.fixture(scope="module")
def embed_server(embedding_models, stories_path, tmp_path_factory):
    running = start_named_server(dict(embedding_models, stories=stories_path), tmp_path_factory.mktemp("embed-home"),
                                 max_loaded=3)
    yield running
    running.stop()


@pytest.fixture
def http(embed_server):
    with httpx.Client(base_url=embed_server.url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("name", ["stories-mean", "stories-cls", "stories-last", "bert-cls"])
def test_vectors_equal_llama_cpp_python(http, reference, name):
    r = http.post("/v1/embeddings", json={"model": name, "input": TEXTS, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])
    assert got.shape == (len(TEXTS), 64)
    assert cosines(got, reference(name)).min() > 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # OpenAI's vectors are unit length
    assert body["usage"]["prompt_tokens"] > len(TEXTS) and body["model"] == name


def test_bert_is_bidirectional_and_causal_cls_is_not(http, reference):
    """A causal model's first (CLS) position sees only BOS: every text gets one vector.
    BERT's [CLS] attends to the whole text: different texts, different vectors."""
    assert cosines(reference("stories-cls")[:1], reference("stories-cls")[1:2])[0] > 0.99999
    assert cosines(reference("bert-cls")[:1], reference("bert-cls")[1:2])[0] < 0.999


def test_openai_client_base64_float_and_token_ids(embed_server, reference, embedding_models, tmp_path):
    import openai

    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused", max_retries=0)
    default = client.embeddings.create(model="stories-mean", input=TEXTS)  # the client asks for base64
    vectors = np.array([d.embedding for d in default.data])
    assert cosines(vectors, reference("stories-mean")).min() > 0.9999
    floats = client.embeddings.create(model="stories-mean", input=TEXTS[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)

    from localllm.runtime import load_model

    model = load_model(str(embedding_models["stories-mean"]), server_settings(tmp_path, ctx_size=512))
    try:
        ids = model.embeddings().embedder.tokenize(TEXTS[1])
    finally:
        model.close()
    by_ids = client.embeddings.create(model="stories-mean", input=[ids, ids[:3]])
    assert np.allclose(by_ids.data[0].embedding, vectors[1], atol=1e-5)
    assert by_ids.usage.prompt_tokens == len(ids) + 3


def test_base64_is_little_endian_float32(http):
    r = http.post("/v1/embeddings", json={"model": "stories-last", "input": "a cat", "encoding_format": "base64"})
    f = http.post("/v1/embeddings", json={"model": "stories-last", "input": "a cat"})
    decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(f.json()["data"][0]["embedding"], dtype=np.float32))


def test_dimensions_and_bad_input_are_refused_in_openai_shape(http):
    assert http.post("/v1/embeddings", json={"model": "stories-mean", "input": "x", "dimensions": 64}).status_code == 200
    r = http.post("/v1/embeddings", json={"model": "stories-mean", "input": "x", "dimensions": 32})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert "64-dimension" in r.json()["error"]["message"]
    for bad in ({"input": []}, {"input": [1, "a"]}, {"input": [[]]}, {"input": {"a": 1}}, {"input": [10**6]},
                {"input": "x", "encoding_format": "int8"}, {"input": ""}):
        r = http.post("/v1/embeddings", json={"model": "stories-mean", **bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["message"]
    long = " ".join(["the cat sat on the mat"] * 200)
    r = http.post("/v1/embeddings", json={"model": "bert-cls", "input": long})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_a_model_without_pooling_is_refused(http):
    r = http.post("/v1/embeddings", json={"model": "stories", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "embeddings_unsupported"
    assert "pooling" in r.json()["error"]["message"]
    r = http.post("/api/embed", json={"model": "stories", "input": "x"})
    assert r.status_code == 400 and "pooling" in r.json()["error"]


def test_ollama_client_embed_truncate_and_legacy_embeddings(embed_server, reference):
    import ollama

    client = ollama.Client(host=embed_server.url)
    r = client.embed(model="bert-cls", input=TEXTS)
    vectors = np.array(r.embeddings)
    assert cosines(vectors, reference("bert-cls")).min() > 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # /api/embed normalises
    assert r.prompt_eval_count > len(TEXTS)
    long = " ".join(["the cat sat on the mat"] * 200)
    assert client.embed(model="bert-cls", input=long).prompt_eval_count == 512  # cut to the context
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="bert-cls", input=long, truncate=False)
    assert e.value.status_code == 400 and "512" in str(e.value)
    legacy = client.embeddings(model="stories-mean", prompt=TEXTS[0])
    assert cosines([legacy.embedding], reference("stories-mean")[:1])[0] > 0.9999
    assert np.isclose(np.linalg.norm(legacy.embedding), np.linalg.norm(reference("stories-mean")[0]), rtol=1e-3)


def test_langchain_embeddings(embed_server, reference):
    from langchain_ollama import OllamaEmbeddings
    from langchain_openai import OpenAIEmbeddings

    ollama_docs = OllamaEmbeddings(model="stories-mean", base_url=embed_server.url).embed_documents(TEXTS)
    assert cosines(ollama_docs, reference("stories-mean")).min() > 0.9999
    # check_embedding_ctx_length=False: by default LangChain tokenizes with tiktoken, whose
    # vocabulary file is downloaded from the internet (none here), and sends OpenAI token ids.
    openai_emb = OpenAIEmbeddings(model="stories-mean", base_url=embed_server.url + "/v1", api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    assert cosines(openai_emb.embed_documents(TEXTS), reference("stories-mean")).min() > 0.9999
    assert cosines([openai_emb.embed_query(TEXTS[2])], reference("stories-mean")[2:])[0] > 0.9999


@pytest.mark.slow
def test_litellm_embedding(embed_server, reference, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of its price list
    import litellm

    r = litellm.embedding(model="openai/stories-last", api_base=embed_server.url + "/v1", api_key="unused",
                          input=TEXTS)
    assert cosines([d["embedding"] for d in r.data], reference("stories-last")).min() > 0.9999
    r = litellm.embedding(model="ollama/stories-last", api_base=embed_server.url, input=TEXTS)
    assert cosines([d["embedding"] for d in r.data], reference("stories-last")).min() > 0.9999


@pytest.mark.slow
def test_embeddings_while_a_chat_streams_on_the_same_model(embed_server, http):
    """SmolLM2 (with mean pooling) streams a long chat reply; embeddings of the same model
    are answered while that generation is still running, then the stream is dropped."""
    events: list[str] = []
    first = threading.Event()
    stop = threading.Event()

    def stream():
        body = {"model": "smollm-mean", "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": 900, "temperature": 0, "stream": True,
                "logit_bias": {"0": -100, "2": -100}}  # no end of text or of turn: it keeps going
        try:
            with httpx.stream("POST", embed_server.url + "/v1/chat/completions", json=body, timeout=120) as r:
                events.append(f"status {r.status_code}")
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line)
                        first.set()
                    if stop.is_set():
                        return
        finally:
            first.set()

    reader = threading.Thread(target=stream)
    reader.start()
    try:
        assert first.wait(120)
        assert events[:1] == ["status 200"] and len(events) > 1, events
        state = embed_server.state
        assert state.admission.running == 1
        for _ in range(3):
            r = http.post("/v1/embeddings", json={"model": "smollm-mean", "input": TEXTS})
            assert r.status_code == 200, r.text
            r = http.post("/api/embed", json={"model": "smollm-mean", "input": TEXTS[0]})
            assert r.status_code == 200, r.text
        assert state.admission.running == 1  # the generation never stopped for them
        assert not any("[DONE]" in e for e in events)
    finally:
        stop.set()
        reader.join(timeout=60)
    wait_until(lambda: embed_server.state.admission.running == 0, timeout=60)


def test_embed_command_prints_json(embedding_models, reference, isolated_home):
    out = run_cli("embed", str(embedding_models["stories-mean"]), *TEXTS, "--threads", "1", "--ctx-size", "512")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["pooling"] == "mean" and body["dimensions"] == 64
    assert cosines(body["embeddings"], reference("stories-mean")).min() > 0.9999
    assert np.allclose(np.linalg.norm(body["embeddings"], axis=1), 1.0, atol=1e-5)
    raw = run_cli("embed", str(embedding_models["stories-mean"]), "--no-normalize", "--threads", "1",
                  input=TEXTS[0] + "\n\n")
    assert raw.returncode == 0, raw.stderr
    vector = json.loads(raw.stdout)["embeddings"][0]
    assert cosines([vector], reference("stories-mean")[:1])[0] > 0.9999
    assert np.isclose(np.linalg.norm(vector), np.linalg.norm(reference("stories-mean")[0]), rtol=1e-3)


def test_embed_command_refuses_a_chat_model(stories_path, isolated_home):
    out = run_cli("embed", str(stories_path), "hello", "--threads", "1")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "pooling" in out.stderr
