"""Queueing and cancellation: concurrent streams are served in turn with the right text,
a full queue answers 503 with Retry-After, and a client that goes away (streaming or
not, running or waiting) cancels its generation and frees its place at once."""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx
import pytest
from openai import OpenAI

from localllm.types import Message, SamplingParams
from tests.server.conftest import server_settings, start_server, wait_until

GREEDY = SamplingParams(temperature=0)
STEP_S = 0.004  # the slow server's extra time per forward pass


def test_two_concurrent_streams_complete_with_the_right_text(server, model_name, direct_model):
    prompts = ["Once upon a time", "The little dog"]
    expected = [direct_model.chat([Message("user", p)], GREEDY, max_tokens=60).text() for p in prompts]
    results: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def run(i):
        with OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
            barrier.wait()
            stream = client.chat.completions.create(model=model_name, temperature=0, max_tokens=60, stream=True,
                                                    messages=[{"role": "user", "content": prompts[i]}])
            results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: expected[0], 1: expected[1]}


# -- a server whose engine is slowed down, so that requests overlap deterministically --------

def slow_loader(name, settings):
    from localllm.runtime import load_model

    model = load_model(name, settings)
    backend = model.engine.backend
    forward, forward_batch = backend.forward, backend.forward_batch

    def slow_forward(*args, **kwargs):
        time.sleep(STEP_S)
        return forward(*args, **kwargs)

    def slow_forward_batch(items):
        time.sleep(STEP_S)
        return forward_batch(items)

    backend.forward, backend.forward_batch = slow_forward, slow_forward_batch
    return model


@pytest.fixture(scope="module")
def slow(stories_path, tmp_path_factory):
    from localllm.server.config import ServerConfig

    # One request decodes at a time here, so that a second one waits in the queue.
    settings = dataclasses.replace(server_settings(tmp_path_factory.mktemp("slow-home")), parallel=1)
    running = start_server(ServerConfig(port=0, preload=str(stories_path), max_queue=1), settings, loader=slow_loader)
    wait_until(lambda: any(s.state == "ready" for s in running.state.models.slots()), timeout=60)
    yield running
    running.stop()


def long_body(model_name, direct_model, stream=True):
    """A generation that never meets EOS: it would run ~4 s on the slow server."""
    eos = {str(t): -100 for t in direct_model.engine.backend.vocabulary.end_of_turn_ids}
    return {"model": model_name, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0,
            "logit_bias": eos, "stream": stream}


def cancelled(state) -> float:
    return state.metrics.generations.value(api="openai_completions", finish_reason="cancelled")


def idle(state) -> bool:
    return state.admission.running == 0 and state.admission.waiting == 0


def test_full_queue_answers_503_with_retry_after(slow, model_name, direct_model):
    state = slow.state
    wait_until(lambda: idle(state))
    body = long_body(model_name, direct_model)
    with httpx.Client(base_url=slow.url, timeout=30) as a, httpx.Client(base_url=slow.url, timeout=30) as b, \
            httpx.Client(base_url=slow.url, timeout=30) as c:
        with a.stream("POST", "/v1/completions", json=body) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # keep it: a dropped httpx iterator closes the connection
            next(lines)
            def wait_in_queue():
                try:
                    b.post("/v1/completions", json=body | {"stream": False})
                except httpx.HTTPError:
                    pass  # we close this client below, on purpose

            waiter = threading.Thread(target=wait_in_queue)
            waiter.start()
            wait_until(lambda: state.admission.waiting == 1)
            r = c.post("/v1/completions", json=body)
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "queue_full"
            r = c.post("/api/generate", json={"model": model_name, "prompt": "x"})
            assert r.status_code == 503 and "busy" in r.json()["error"]
        # Leaving the stream disconnected A: B runs next; cancel B by closing its client.
        wait_until(lambda: state.admission.waiting == 0 and state.admission.running == 1)
        b.close()
        waiter.join(30)
    wait_until(lambda: idle(state))
    assert state.metrics.rejected.value(reason="queue_full") >= 2


def test_disconnect_mid_stream_frees_the_engine_at_once(slow, model_name, direct_model):
    state = slow.state
    wait_until(lambda: idle(state))
    before = cancelled(state)
    generated_before = state.metrics.generated_tokens.value()
    client = OpenAI(base_url=slow.url + "/v1", api_key="x", max_retries=0)
    stream = client.completions.create(**long_body(model_name, direct_model))
    first = next(iter(stream))
    assert first.choices[0].text
    stream.close()  # the editor aborts: the connection goes away
    t0 = time.monotonic()
    wait_until(lambda: cancelled(state) == before + 1)
    wait_until(lambda: idle(state))
    freed_after = time.monotonic() - t0
    # Cancelled long before its 900 tokens (which would take > 3.6 s here).
    assert state.metrics.generated_tokens.value() - generated_before < 900
    # The freed place is usable at once: a new request is admitted and runs.
    r = client.completions.create(model=model_name, prompt="Once", max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length"
    client.close()
    print(f"engine free {freed_after * 1000:.1f} ms after the disconnect")


def test_disconnect_of_a_non_streaming_request_cancels_it(slow, model_name, direct_model):
    state = slow.state
    wait_until(lambda: idle(state))
    before = cancelled(state)
    with httpx.Client(base_url=slow.url, timeout=httpx.Timeout(30, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/completions", json=long_body(model_name, direct_model, stream=False))
    wait_until(lambda: cancelled(state) == before + 1)
    wait_until(lambda: idle(state))


def test_disconnect_while_waiting_leaves_the_queue(slow, model_name, direct_model):
    state = slow.state
    wait_until(lambda: idle(state))
    body = long_body(model_name, direct_model)
    with httpx.Client(base_url=slow.url, timeout=30) as a:
        with a.stream("POST", "/v1/completions", json=body) as running:
            lines = running.iter_lines()
            next(lines)
            waiting_client = httpx.Client(base_url=slow.url, timeout=httpx.Timeout(30, read=0.2))
            with pytest.raises(httpx.ReadTimeout):
                waiting_client.post("/v1/completions", json=body)  # queued behind A, then gives up
            waiting_client.close()
            wait_until(lambda: state.admission.waiting == 0)
            assert state.admission.running == 1  # A is still generating
    wait_until(lambda: idle(state))
