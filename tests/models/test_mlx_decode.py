"""The MLX backend's decode paths against its own synchronous ones, on real models:

- decoding one step ahead (`decodes_ahead`: generate's `greedy_ahead` and the engine's
  scheduler) gives plain greedy decoding's tokens and leaves the cache as it does, at
  every way a generation ends (end token, stop string, max tokens, cancellation, the
  context), and the next turn reuses the cache as much;
- `forward_batch` (several caches' tokens packed into one model call) gives each item
  the logits it gets alone.

"Synchronous" is the same loaded backend with its ahead capability switched off
(`Synchronous`), so both sides run the same model code and weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from localllm.backend.protocol import BatchItem
from localllm.backend.select import load_backend
from localllm.config import Settings
from localllm.engine import Engine
from localllm.engine.generate import generate
from localllm.kvcache import KVCacheManager
from localllm.types import DraftParams, GenerationRequest, SamplingParams
from tests.conftest import require_model

GREEDY = SamplingParams(temperature=0)
NO_DRAFT = DraftParams("none")
# Batched and one-by-one logits agree this closely (measured: bit-identical on this CPU,
# float32; the bound leaves room for a matmul that sums a batch in another order).
BATCH_ATOL = 1e-4


def settings(**kw) -> Settings:
    kw.setdefault("ctx_size", 1024)
    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend="mlx", threads=1, **kw)


class Synchronous:
    """A loaded backend with decoding ahead switched off: every other call is its own."""

    decodes_ahead = False

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)


class CountingAhead:
    """The loaded backend, counting the passes fed a token still on the device."""

    def __init__(self, backend):
        self._backend = backend
        self.ahead_passes = 0

    def forward(self, tokens, cache, all_logits=False):
        self.ahead_passes += any(not isinstance(t, int) for t in tokens)
        return self._backend.forward(tokens, cache, all_logits)

    def forward_batch(self, items):
        self.ahead_passes += any(not isinstance(t, int) for item in items for t in item.tokens)
        return self._backend.forward_batch(items)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@pytest.fixture(scope="module")
def stories(stories_path):
    backend = load_backend(str(stories_path), settings(ctx_size=512))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def smollm(smollm_path):
    backend = load_backend(str(smollm_path), settings())
    yield backend
    backend.close()


def run(backend, request, cancel_after: int | None = None):
    """(tokens, text, finish reason, the cache's tokens afterwards) of one generation."""
    cache = backend.new_cache()
    tokens, text, finish = [], [], None
    cancelled = (lambda: len(tokens) >= cancel_after) if cancel_after else (lambda: False)
    try:
        for chunk in generate(backend, cache, request, cancelled):
            if chunk.token is not None:
                tokens.append(chunk.token)
            text.append(chunk.text)
            finish = chunk.finish_reason or finish
        return tokens, "".join(text), finish, list(cache.tokens)
    finally:
        cache.close()


def both(backend, request, **kw):
    counting = CountingAhead(backend)
    ahead = run(counting, request, **kw)
    assert counting.ahead_passes > 0, "nothing was decoded ahead"
    return ahead, run(Synchronous(backend), request, **kw)


def test_stories_ahead_equals_synchronous_and_the_golden_text(stories):
    reference = require_model("stories260K/greedy-reference.txt").read_text().rstrip("\n")
    ahead, sync = both(stories, GenerationRequest((stories.vocabulary.bos_id,), GREEDY, max_tokens=256))
    assert ahead == sync
    assert ahead[1] == reference and ahead[2] == "length"
    assert len(ahead[3]) == 1 + 255  # the last token is never fed, as synchronous decoding leaves it


@pytest.mark.slow
def test_smollm2_ahead_equals_synchronous(smollm):
    prompt = smollm.vocabulary.encode("A short poem about the sea:\n")
    ahead, sync = both(smollm, GenerationRequest(tuple(prompt), GREEDY, max_tokens=24))
    assert ahead == sync and len(ahead[0]) >= 20


def test_every_ending_is_exact(stories):
    bos = (stories.vocabulary.bos_id,)
    full, text, _, _ = run(Synchronous(stories), GenerationRequest(bos, GREEDY, max_tokens=80))
    stop_id = full[30]
    stop_text = text[100:108]
    endings = [
        ("end token", GenerationRequest(bos, GREEDY, max_tokens=80, stop_token_ids=frozenset({stop_id})), {}),
        ("stop string", GenerationRequest(bos, GREEDY, max_tokens=80, stop=(stop_text,)), {}),
        ("max tokens 1", GenerationRequest(bos, GREEDY, max_tokens=1), {}),
        ("max tokens 2", GenerationRequest(bos, GREEDY, max_tokens=2), {}),
        ("cancelled", GenerationRequest(bos, GREEDY, max_tokens=80), {"cancel_after": 7}),
    ]
    for name, request, kw in endings:
        ahead, sync = both(stories, request, **kw) if name != "max tokens 1" else \
            (run(stories, request, **kw), run(Synchronous(stories), request, **kw))
        assert ahead == sync, name
    assert both(stories, endings[0][1])[0][2] == "stop"
    assert stop_text not in both(stories, endings[1][1])[0][1]


def test_the_context_limit_is_exact(stories_path):
    backend = load_backend(str(stories_path), settings(ctx_size=40))
    try:
        request = GenerationRequest(tuple(backend.vocabulary.encode("Once upon a time")), GREEDY, ignore_eos=True)
        ahead, sync = both(backend, request)
        assert ahead == sync and ahead[2] == "length"
        assert len(ahead[3]) == 40  # filled, never overflowed
    finally:
        backend.close()


def engine_turns(backend, turns: int = 2):
    """Two chat-like turns through an engine (one request at a time, no drafting): each
    reply's text and how many prompt tokens the KV-cache manager reused."""
    out = []
    with Engine(backend, KVCacheManager(backend), parallel=1) as engine:
        vocab = backend.vocabulary
        prompt = list(vocab.encode("Once upon a time, Lily"))
        for i in range(turns):
            handle = engine.submit(GenerationRequest(tuple(prompt), GREEDY, max_tokens=12, draft=NO_DRAFT))
            chunks = list(handle)
            reply = [c.token for c in chunks if c.token is not None]
            out.append(("".join(c.text for c in chunks), handle.stats.cached_tokens, handle.finish_reason))
            prompt += reply + list(vocab.encode(" and then", add_bos=False))
    return out


def test_the_engine_decodes_ahead_with_the_same_text_and_cache_reuse(stories_path):
    ahead_backend = CountingAhead(load_backend(str(stories_path), settings(ctx_size=512)))
    ahead = engine_turns(ahead_backend)
    assert ahead_backend.ahead_passes > 0
    sync = engine_turns(Synchronous(load_backend(str(stories_path), settings(ctx_size=512))))
    assert ahead == sync
    assert ahead[1][1] > len(ahead[0][0]) // 8  # the second turn reused the first's cache


def test_cancelling_in_the_engine_leaves_the_cache_as_synchronous(stories_path):
    def cancelled_cache(backend):
        manager = KVCacheManager(backend)
        with Engine(backend, manager, parallel=1) as engine:
            prompt = tuple(backend.vocabulary.encode("Once upon a time"))
            handle = engine.submit(GenerationRequest(prompt, GREEDY, max_tokens=200, ignore_eos=True, draft=NO_DRAFT))
            tokens = []
            for chunk in handle:
                if chunk.token is not None:
                    tokens.append(chunk.token)
                if len(tokens) == 6:
                    handle.cancel()
            return handle.finish_reason, engine.call(lambda b: list(manager.working.tokens)), prompt, tokens

    finish, cache_tokens, prompt, tokens = cancelled_cache(load_backend(str(stories_path), settings()))
    assert finish == "cancelled"
    # The cache holds the prompt and what was generated but the last token taken.
    assert cache_tokens == list(prompt) + tokens[: len(cache_tokens) - len(prompt)]
    assert len(cache_tokens) == len(prompt) + len(tokens) - 1


# -- forward_batch ---------------------------------------------------------------------------


def alone_and_batched(backend, prompts, steps: int):
    """Greedy-decode each prompt alone, then all together through forward_batch (prompts
    prefilled in one pass too): per step, each sequence's logits both ways."""
    alone = []
    for prompt in prompts:
        cache = backend.new_cache()
        logits = backend.forward(prompt, cache)
        rows = [logits.numpy(-1).copy()]
        for _ in range(steps):
            logits = backend.forward([int(logits.argmax()[-1])], cache)
            rows.append(logits.numpy(-1).copy())
        alone.append(np.stack(rows))
        cache.close()
    caches = [backend.new_cache() for _ in prompts]
    out = backend.forward_batch([BatchItem(c, p) for c, p in zip(caches, prompts)])
    batched = [[o.numpy(-1).copy()] for o in out]
    for _ in range(steps):
        out = backend.forward_batch([BatchItem(c, (int(o.argmax()[-1]),)) for c, o in zip(caches, out)])
        for rows, o in zip(batched, out):
            rows.append(o.numpy(-1).copy())
    for cache, prompt in zip(caches, prompts):
        assert len(cache.tokens) == len(prompt) + steps
        cache.close()
    return alone, [np.stack(rows) for rows in batched]


@pytest.mark.parametrize("model", ["stories", "gemma3 sliding window, q8_0 KV"])
def test_forward_batch_gives_each_cache_its_own_logits(model, stories_path, build_model):
    if model == "stories":
        backend = load_backend(str(stories_path), settings())
    else:  # window 8: the sliding layers drop keys during the test (sliding_keep 4)
        backend = load_backend(str(build_model("gemma3", "Q4_K_M")), settings(kv_type="q8_0"))
        backend.sliding_keep = 4
    try:
        vocab = backend.vocabulary
        prompts = [vocab.encode(t) for t in ("Once upon a time", "The little dog ran to the big tree and",
                                             "Tom", "One day, a bird sang a song about")]
        alone, batched = alone_and_batched(backend, prompts, steps=24)
        for a, b in zip(alone, batched):
            assert np.abs(a - b).max() <= BATCH_ATOL
            assert (a.argmax(-1) == b.argmax(-1)).all()
    finally:
        backend.close()


def test_forward_batch_mixes_prefill_chunks_all_logits_and_decode(stories):
    vocab = stories.vocabulary
    a, b, c = (vocab.encode(t) for t in ("Once upon a time", "The cat sat on the mat", "Lily and Tom"))
    want = []
    more_b = vocab.encode(" and it", add_bos=False)
    for prompt, more, all_logits in ((a, [7], False), (b, more_b, True), (c, [], False)):
        cache = stories.new_cache()
        if more:
            stories.forward(prompt, cache)
            want.append(stories.forward(more, cache, all_logits).numpy().copy())
        else:
            want.append(stories.forward(prompt, cache).numpy().copy())
        cache.close()
    ca, cb, cc = (stories.new_cache() for _ in range(3))
    stories.forward(a, ca)
    stories.forward(b, cb)
    got = stories.forward_batch([BatchItem(ca, [7]), BatchItem(cb, more_b, True), BatchItem(cc, c)])
    assert [g.n_rows for g in got] == [1, len(more_b), 1]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.reshape(g.n_rows, -1), atol=BATCH_ATOL)
    assert cb.tokens == b + more_b and cc.tokens == c and ca.tokens == a + [7]


def test_forward_batch_overflow_leaves_every_cache_unchanged(stories_path):
    from localllm.errors import ContextOverflowError

    backend = load_backend(str(stories_path), settings(ctx_size=16))
    try:
        x, y = backend.new_cache(), backend.new_cache()
        backend.forward([1, 2, 3], x)
        with pytest.raises(ContextOverflowError):
            backend.forward_batch([BatchItem(x, [4]), BatchItem(y, list(range(1, 18)))])
        assert x.tokens == [1, 2, 3] and y.tokens == []
        assert [layer.offset for layer in x.layers] == [3] * len(x.layers)
    finally:
        backend.close()


def test_a_sliding_cache_with_no_spare_positions_keeps_the_token_fed_ahead(build_model):
    """Gemma 3's window-8 layers keeping nothing beyond their window cannot be cut back one
    token: decoding ahead still gives the synchronous tokens, and the cache keeps (and
    lists) the token it was fed ahead instead of failing."""
    backend = load_backend(str(build_model("gemma3", "Q4_K_M")), settings())
    try:
        backend.sliding_keep = 0
        request = GenerationRequest(tuple(backend.vocabulary.encode("Once upon a time")), GREEDY, max_tokens=20,
                                    ignore_eos=True)
        ahead, sync = both(backend, request)
        assert ahead[:3] == sync[:3]
        assert ahead[3] == sync[3] + ahead[0][-1:]
        with Engine(backend, KVCacheManager(backend), parallel=1) as engine:
            handle = engine.submit(GenerationRequest(request.prompt_tokens, GREEDY, max_tokens=20, ignore_eos=True,
                                                     draft=NO_DRAFT))
            assert [c.token for c in handle if c.token is not None] == ahead[0]
            assert handle.finish_reason == "length"
    finally:
        backend.close()
