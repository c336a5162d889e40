"""The engine thread on the real stories260K model: seeds, stops, cancellation, reuse."""

import threading

import pytest

from localllm.engine import Engine
from localllm.errors import ContextOverflowError
from localllm.types import GenerationRequest, SamplingParams


def _load(stories_path):
    from localllm.backend.select import load_backend
    from localllm.config import Settings
    from pathlib import Path

    return load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=512))


@pytest.fixture(scope="module")
def engine(stories_path):
    with Engine(_load(stories_path)) as e:
        yield e


def request(engine, prompt="Once upon a time", **kw):
    tokens = tuple(engine.backend.vocabulary.encode(prompt))
    sampling = SamplingParams(**{k: kw.pop(k) for k in list(kw) if k in SamplingParams.__dataclass_fields__})
    return GenerationRequest(tokens, sampling, **({"max_tokens": 60} | kw))


def test_same_seed_same_text_other_seed_other_text(engine):
    a = engine.submit(request(engine, seed=7, temperature=1.0)).text()
    b = engine.submit(request(engine, seed=7, temperature=1.0)).text()
    c = engine.submit(request(engine, seed=8, temperature=1.0)).text()
    assert a == b
    assert a != c


def test_stop_string_ends_generation_and_is_not_emitted(engine):
    full = engine.submit(request(engine, temperature=0)).text()
    assert "Lily" in full
    h = engine.submit(request(engine, temperature=0, stop=("Lily",)))
    text = h.text()
    assert text == full[: full.index("Lily")]
    assert h.finish_reason == "stop"


def test_max_tokens_finishes_with_length(engine):
    h = engine.submit(request(engine, temperature=0, max_tokens=7))
    h.text()
    assert h.finish_reason == "length"
    assert h.stats.generated_tokens == 7


def test_cancellation_mid_generation(engine):
    h = engine.submit(request(engine, temperature=0, max_tokens=400))
    chunks = []
    for chunk in h:
        chunks.append(chunk)
        if len(chunks) == 5:
            h.cancel()
    assert h.finish_reason == "cancelled"
    assert 5 <= h.stats.generated_tokens < 400
    # The engine serves the next request normally.
    assert engine.submit(request(engine, temperature=0, max_tokens=3)).text()


def test_cancel_before_start_never_runs(engine):
    gate = threading.Event()
    engine._requests.put((lambda backend: gate.wait(5), None))  # keep the thread busy
    h = engine.submit(request(engine, temperature=0))
    h.cancel()
    gate.set()
    assert h.text() == "" and h.finish_reason == "cancelled"


def test_follow_up_reuses_the_cached_prefix(engine):
    first = engine.submit(request(engine, "Once upon a time, there was a cat", temperature=0, max_tokens=5))
    first.text()
    second = engine.submit(request(engine, "Once upon a time, there was a cat named Tom", temperature=0, max_tokens=5))
    second.text()
    n_first = len(engine.backend.vocabulary.encode("Once upon a time, there was a cat"))
    assert second.stats.cached_tokens >= n_first


def test_prompt_longer_than_context_is_refused(engine):
    h = engine.submit(GenerationRequest(tuple([1] + [400] * 600), SamplingParams(temperature=0)))
    with pytest.raises(ContextOverflowError, match="600|601.*512"):
        h.text()


def test_engine_call_runs_on_the_engine_thread(engine):
    name = engine.call(lambda backend: threading.current_thread().name)
    assert name == "localllm-engine"


class _UnreadableLogits:
    """Logits a buggy backend might hand back: reading them raises."""

    n_rows = 1

    def numpy(self, row=None):
        raise RuntimeError("unreadable logits")

    def argmax(self):
        raise RuntimeError("unreadable logits")


class _BuggyBackend:
    """The real backend, except that while `broken` its passes run but hand back logits
    that cannot be read: a bug that surfaces inside the engine's step, not in a forward
    pass (whose errors the scheduler already gives to the requests in it)."""

    def __init__(self, backend):
        self._backend = backend
        self.broken = True

    def forward_batch(self, items):
        rows = self._backend.forward_batch(items)
        return [_UnreadableLogits() for _ in rows] if self.broken else rows

    def __getattr__(self, name):
        return getattr(self._backend, name)


@pytest.mark.timeout(120)
def test_a_bug_in_a_step_fails_the_requests_and_the_engine_serves_on(stories_path):
    """Before, an exception out of a step ended the engine thread: every client waited
    forever, and so did every later request and `call`."""
    backend = _BuggyBackend(_load(stories_path))
    with Engine(backend, parallel=2) as e:
        handles = [e.submit(request(e, p, temperature=0, max_tokens=20)) for p in ("Once upon a time", "Tom ran")]
        for h in handles:
            with pytest.raises(RuntimeError, match="unreadable logits"):
                h.text()
        assert e.call(lambda b: len(e.scheduler.running)) == 0
        backend.broken = False
        again = e.submit(request(e, "Once upon a time", temperature=0, max_tokens=20))
        text = again.text()
        assert again.finish_reason == "length" and again.stats.generated_tokens == 20
    with Engine(_load(stories_path)) as fresh:
        assert fresh.submit(request(fresh, "Once upon a time", temperature=0, max_tokens=20)).text() == text
