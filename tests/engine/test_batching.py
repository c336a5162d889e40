"""Continuous batching on the real llama.cpp and MLX backends (engine/batching.py; MLX
also decodes one step ahead there): requests that run together give the text each gives
alone, a cancelled one frees its sequence while the others go on, and a long prompt
arriving mid-stream is fed in chunks between the others' tokens. What ran together is read from the forward passes themselves (a recording
wrapper around the real backend), never from timing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localllm.backend.select import load_backend
from localllm.config import Settings
from localllm.engine import Engine
from localllm.engine.batching import PREFILL_CHUNK
from localllm.kvcache import KVCacheManager
from localllm.types import DraftParams, GenerationRequest, SamplingParams
from localllm.kvcache.manager import FED_AT_LEAST


class RecordingBackend:
    """The real backend; each forward pass is recorded as [(cache, number of tokens fed)],
    and in `fed` as [(position of the first, tokens)]."""

    def __init__(self, backend):
        self._backend = backend
        self.passes: list[list[tuple[object, int]]] = []
        self.fed: list[list[tuple[int, tuple[int, ...]]]] = []
        self.lock = threading.Lock()

    def forward(self, tokens, cache, all_logits=False):
        with self.lock:
            self.passes.append([(cache, len(tokens))])
            self.fed.append([(len(cache.tokens), tuple(tokens))])
        return self._backend.forward(tokens, cache, all_logits)

    def forward_batch(self, items):
        with self.lock:
            self.passes.append([(item.cache, len(item.tokens)) for item in items])
            self.fed.append([(len(item.cache.tokens), tuple(item.tokens)) for item in items])
        return self._backend.forward_batch(items)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _load(path: Path, parallel: int, flash_attn: str = "on", backend: str = "llamacpp", **settings):
    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=2048, threads=1,
                        flash_attn=flash_attn, parallel=parallel, backend=backend, **settings)
    return load_backend(str(path), settings)


def _available(name: str) -> str:
    from localllm.backend.select import BACKENDS

    reason = BACKENDS[name].unavailable_reason()
    if reason:
        pytest.skip(reason)
    return name


# The tests below that hold for any backend run on each (flash_attn only matters to llama.cpp).
@pytest.fixture(params=["llamacpp", "mlx"])
def backend_name(request) -> str:
    return _available(request.param)


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def stories_engines(request, stories_path):
    """One engine serving one request at a time, one decoding up to 4 together."""
    name = _available(request.param)
    one = Engine(_load(stories_path, 1, backend=name), parallel=1)
    backend = RecordingBackend(_load(stories_path, 4, backend=name))
    four = Engine(backend, KVCacheManager(backend), parallel=4)
    yield one, four
    one.close()
    four.close()


PROMPTS = ["Once upon a time", "The little dog", "Tom and Sue went to the park", "One day, a bird"]


def _request(vocab, prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(tuple(vocab.encode(prompt)), SamplingParams(temperature=0), **({"max_tokens": 48} | kw))


def test_concurrent_requests_give_the_same_greedy_text_as_one_at_a_time(stories_engines):
    one, four = stories_engines
    vocab = one.backend.vocabulary
    alone = [one.submit(_request(vocab, p)).text() for p in PROMPTS]
    four.backend.passes.clear()
    handles = [four.submit(_request(vocab, p)) for p in PROMPTS]
    together = [h.text() for h in handles]
    assert together == alone
    assert all(h.finish_reason == "length" and h.stats.generated_tokens == 48 for h in handles)
    # They really decoded together: passes fed one token to each of several caches.
    widest = max(sum(1 for _, n in p if n == 1) for p in four.backend.passes)
    assert widest >= 2


@pytest.mark.parametrize("draft, flash_attn", [("none", "off"), ("prompt-lookup", "off"), ("prompt-lookup", "on"),
                                               ("auto", "auto")])
def test_concurrent_greedy_text_on_the_real_chat_model(smollm_path, draft, flash_attn):
    """SmolLM2 Q4_1: each of 4 sequences decoding together has a KV stream of its own, so
    a batched sequence computes what it computes alone, with flash attention off or on,
    and with prompt lookup (it drafts where the text repeats, alone or not).
    `--draft auto` drafts by measured speed, which differs alone and in a batch, and a
    verified draft rounds differently from a single step (llama.cpp's kernels for one
    token and for several): there every token is plain decoding's argmax for its
    history or a near-tie, as the speculative tests allow (test_greedy_equality)."""
    from tests.speculative.test_greedy_equality import LOGIT_TOLERANCE, plain_logits_along

    settings = {"draft": draft}
    backend = _load(smollm_path, 4, flash_attn, **settings)
    assert backend.streams and (flash_attn == "auto" or backend.flash_attn == (flash_attn == "on"))
    fa = "on" if backend.flash_attn else "off"
    vocab = backend.vocabulary
    req = lambda p: _request(vocab, p, max_tokens=40, ignore_eos=True, draft=DraftParams(draft))
    with Engine(_load(smollm_path, 1, fa, **settings), parallel=1) as one:
        alone = [one.submit(req(p)).text() for p in PROMPTS]
    with Engine(backend, KVCacheManager(backend), parallel=4) as four:
        handles = [four.submit(req(p)) for p in PROMPTS]
        chunks = [list(h) for h in handles]
        replies = ["".join(c.text for c in cs) for cs in chunks]
        tokens = [[c.token for c in cs if c.token is not None] for cs in chunks]
        if draft == "prompt-lookup":
            assert any(h.stats.draft_tokens for h in handles)
    if draft != "auto":
        assert replies == alone
        return
    single = _load(smollm_path, 1, fa)
    try:
        for prompt, reply in zip(PROMPTS, tokens):
            logits = plain_logits_along(single, single.vocabulary.encode(prompt), reply)
            gaps = [float(row.max() - row[t]) for row, t in zip(logits, reply)]
            assert max(gaps) <= LOGIT_TOLERANCE, (prompt, gaps)
    finally:
        single.close()


def test_a_cancelled_request_frees_its_sequence_while_the_others_continue(stories_path, backend_name):
    backend = RecordingBackend(_load(stories_path, 2, backend=backend_name))
    with Engine(backend, KVCacheManager(backend), parallel=2) as engine:
        vocab = backend.vocabulary
        long = engine.submit(_request(vocab, PROMPTS[0], max_tokens=300, ignore_eos=True))
        doomed = engine.submit(_request(vocab, PROMPTS[1], max_tokens=300, ignore_eos=True))
        for i, _ in enumerate(doomed):
            if i == 5:
                doomed.cancel()
        assert doomed.finish_reason == "cancelled"
        # Its place went back: with 2 places, a third request runs while the long one does.
        third = engine.submit(_request(vocab, PROMPTS[2], max_tokens=8))
        third_text = third.text()
        long_text = long.text()
        assert long.finish_reason == "length" and long.stats.generated_tokens == 300
        assert third.finish_reason == "length"
        long_cache = next(c for p in backend.passes for c, n in p if n > 1 and len(c.tokens) >= 300)
        shared = [p for p in backend.passes if len(p) == 2 and any(c is long_cache for c, _ in p)]
        assert shared, "the third request never decoded beside the long one"
        assert engine.call(lambda b: len(engine.scheduler.running)) == 0
    with Engine(_load(stories_path, 1, backend=backend_name), parallel=1) as alone:
        vocab = alone.backend.vocabulary
        assert alone.submit(_request(vocab, PROMPTS[0], max_tokens=300, ignore_eos=True)).text() == long_text
        assert alone.submit(_request(vocab, PROMPTS[2], max_tokens=8)).text() == third_text


def test_a_long_prompt_arriving_mid_stream_is_fed_one_chunk_per_step(stories_path, backend_name):
    backend = RecordingBackend(_load(stories_path, 2, backend=backend_name))
    with Engine(backend, KVCacheManager(backend), parallel=2) as engine:
        vocab = backend.vocabulary
        streaming = engine.submit(_request(vocab, PROMPTS[0], max_tokens=1500, ignore_eos=True))
        chunks = iter(streaming)
        for _ in range(3):
            next(chunks)
        words = " ".join(["the cat sat on the mat and the dog ran to the big tree"] * 60)
        long_prompt = tuple(vocab.encode(words))[:700]
        late = engine.submit(GenerationRequest(long_prompt, SamplingParams(temperature=0), max_tokens=4))
        late.text()
        rest = "".join(c.text for c in chunks)
        assert streaming.finish_reason == "length" and rest
        # Every pass that fed a piece of the long prompt: the piece is at most one chunk,
        # and the streaming request's next token (with any drafts of it) went in the same pass.
        pieces = [(i, start, toks) for i, p in enumerate(backend.fed) for start, toks in p
                  if len(toks) > 1 and start >= 1 and toks == long_prompt[start:start + len(toks)]]
        assert sum(len(toks) for _, _, toks in pieces) + min(start for _, start, _ in pieces) == len(long_prompt)
        assert len(pieces) == -(-(len(long_prompt) - pieces[0][1]) // PREFILL_CHUNK)
        for i, _, toks in pieces:
            assert len(toks) <= PREFILL_CHUNK
            assert sum(1 for s, t in backend.fed[i] if t != long_prompt[s:s + len(t)]) == 1


def test_a_prompt_prefix_held_by_a_running_request_is_shared_not_prefilled(stories_path, backend_name):
    """While one request holds the working cache, another whose prompt starts the same way
    gets a cache of its own holding that prefix (copied from the running one), exactly
    (flash attention off: its f16 scores would round a split prefill differently). Three
    places: two requests and a fresh cache to compare with."""
    backend = _load(stories_path, 3, "off", backend_name)
    manager = KVCacheManager(backend)
    try:
        vocab = backend.vocabulary
        shared = vocab.encode("Once upon a time, there was a little girl named Lily. She loved to play")
        first = shared + vocab.encode(" outside in the sun", add_bos=False)
        second = shared + vocab.encode(" with her red ball in the garden behind the house, where the big old "
                                       "tree grew and the birds sang all day long", add_bos=False)
        a = manager.acquire(first)
        backend.forward(first[len(a.cache.tokens):], a.cache)
        b = manager.acquire(second)
        assert b.cache is not a.cache
        common = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
        assert common >= len(shared)
        assert (b.source, b.reused_tokens) == ("shared", common)
        got = backend.forward(second[len(b.cache.tokens):], b.cache).numpy(-1).copy()
        fresh = backend.new_cache()
        want = backend.forward(second, fresh).numpy(-1).copy()
        fresh.close()
        assert abs(got - want).max() < 1e-3
        manager.release(b)  # the working cache is busy: b (over MIN_PARK_TAIL long) is parked
        assert manager.working is a.cache and any(p.tokens == second for p in manager.parked)
        manager.release(a)
        again = manager.acquire(second + [13])
        assert again.reused_tokens == len(second) + 1 - FED_AT_LEAST
        manager.release(again)
    finally:
        manager.close()
        backend.close()


def test_a_request_with_its_own_producer_runs_beside_the_batch(stories_path, backend_name):
    """A request whose producer is not plain decoding (speculative decoding) goes through
    `generate` one chunk per step while plain requests decode in the batch; each keeps
    its own text and draft flags."""
    from tests.engine.test_generate import replaying

    script = [(vocab_id, i % 2 == 1) for i, vocab_id in enumerate([300, 301, 302, 303, 304, 305])]
    closed: list[bool] = []
    backend = _load(stories_path, 2, backend=backend_name)
    producer = replaying(script, closed)
    with Engine(backend, KVCacheManager(backend), parallel=2,
                producer_for=lambda r: producer if r.max_tokens == 6 else None) as engine:
        vocab = backend.vocabulary
        plain = engine.submit(_request(vocab, PROMPTS[0], max_tokens=40))
        drafted = engine.submit(_request(vocab, PROMPTS[1], max_tokens=6, ignore_eos=True))
        chunks = [c for c in drafted if c.token is not None]
        plain_text = plain.text()
    assert [(c.token, c.from_draft) for c in chunks] == script
    assert drafted.finish_reason == "length" and closed == [True]
    with Engine(_load(stories_path, 1, backend=backend_name), parallel=1) as alone:
        assert alone.submit(_request(alone.backend.vocabulary, PROMPTS[0], max_tokens=40)).text() == plain_text
