"""KV reuse on a sliding-window model (issue #20): a test-built Gemma 3 whose window of 4
tokens every prompt exceeds. Greedy output with the prefix cache (repeats, shared
prefixes, parked conversations, disk snapshots, regenerations) must equal the output of
an empty cache token for token, and `cached_tokens` must count only what was reused.

Before the fix, a state reloaded from a park or a snapshot and cut back below its last
window computed on missing keys: the first generated token already differed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require_model
from localllm.engine import Engine
from localllm.kvcache import KVCacheManager, SnapshotStore
from localllm.types import GenerationRequest, SamplingParams

sys.path.insert(0, str(REPO / "tests" / "backends"))
from sliding_window_model import SLIDING_WINDOW, write_gemma3  # noqa: E402

GREEDY = SamplingParams(temperature=0)
STORY = "Once upon a time there was a little girl named Lily. She liked to play in the park with her dog"
PROMPTS = [
    STORY,
    STORY + ". One day they found a big red ball",
    STORY + ". The sun was hot",
    "Tom had a small boat. He took it to the lake every day to play",
    "Tom had a small boat. He was very happy",
]


@pytest.fixture(scope="module")
def gemma3_path(tmp_path_factory) -> Path:
    stories = require_model("stories260K/stories260K.gguf")
    return write_gemma3(tmp_path_factory.mktemp("gemma3") / "gemma3-tiny.gguf", stories)


def load(path: Path):
    from localllm.cpu_backend.llamacpp import LlamaCppBackend
    from localllm.formats.gguf import inspect_gguf

    return LlamaCppBackend(inspect_gguf(str(path)), ctx_size=512, threads=1)


@pytest.fixture(scope="module")
def backend(gemma3_path):
    b = load(gemma3_path)
    yield b
    b.close()


def greedy(engine: Engine, tokens, n: int = 12):
    handle = engine.submit(GenerationRequest(tuple(tokens), GREEDY, max_tokens=n, ignore_eos=True))
    out = [c.token for c in handle if c.token is not None]
    return out, handle.stats.cached_tokens


@pytest.fixture(scope="module")
def reference(gemma3_path):
    """Greedy continuations computed on an empty cache (`--no-cache`)."""
    with Engine(load(gemma3_path)) as engine:
        engine.caches.enabled = False
        tokens = [engine.backend.tokenize(p) for p in PROMPTS]
        return {tuple(t): greedy(engine, t)[0] for t in tokens}, tokens


def test_the_model_slides(backend):
    assert backend.sliding_window == SLIDING_WINDOW
    assert all(len(backend.tokenize(p)) > 3 * SLIDING_WINDOW for p in PROMPTS)


def test_a_reloaded_state_is_exact_exactly_where_its_capability_says(backend):
    """Cut back to every length: the capability's answer matches the logits."""
    prompt = backend.tokenize(STORY)
    src = backend.new_cache()
    fresh = backend.forward(prompt, src, all_logits=True).copy()
    state = backend.save_state(src)
    predicted = backend.cache_capability(src).restored_min_tokens
    assert backend.cache_capability(src).min_tokens == 0  # the live cache keeps every position
    cache = backend.new_cache()
    try:
        exact = []
        for n in range(1, len(prompt)):
            assert backend.load_state(cache, prompt, state)
            capability = backend.cache_capability(cache)
            assert capability.min_tokens == predicted
            if not capability.allows(n):
                with pytest.raises(ValueError, match="sliding-window"):
                    backend.trim(cache, n)
                assert cache.tokens == prompt  # a refused trim changes nothing
                continue
            backend.trim(cache, n)
            logits = backend.forward(prompt[n:], cache, all_logits=True)
            assert np.allclose(logits, fresh[n:], atol=1e-3), n
            exact.append(n)
        # llama.cpp saved the last window only: resuming one token back is the deepest cut.
        assert exact == [len(prompt) - 1]
        # Cutting below the window computes on missing keys: the check above is not vacuous.
        backend.load_state(cache, prompt, state)
        cache.tokens = cache.tokens[: len(prompt) - 3]
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(backend._mem, cache.seq_id, len(prompt) - 3, -1)
        wrong = backend.forward(prompt[-3:], cache, all_logits=True)
        assert not np.allclose(wrong, fresh[-3:], atol=1e-3)
    finally:
        src.close()
        cache.close()


def test_the_live_cache_cuts_back_anywhere(backend):
    prompt = backend.tokenize(PROMPTS[3])
    cache = backend.new_cache()
    try:
        fresh = backend.forward(prompt, cache, all_logits=True).copy()
        for n in range(len(prompt) - 1, 0, -3):
            assert backend.cache_capability(cache).allows(n)
            backend.trim(cache, n)
            assert np.allclose(backend.forward(prompt[n:], cache, all_logits=True), fresh[n:], atol=1e-3)
    finally:
        cache.close()


def test_reuse_through_the_engine_equals_no_cache(gemma3_path, reference, tmp_path):
    """Repeats, shared prefixes, conversations parked and resumed, a regeneration, then a
    restart that reloads disk snapshots: every output equals the empty-cache one."""
    expected, prompts = reference
    store = tmp_path / "snapshots"

    def check(engine, tokens, reused_at_least=0):
        out, cached = greedy(engine, tokens)
        assert out == expected[tuple(tokens)]
        assert cached >= reused_at_least
        return cached

    backend = load(gemma3_path)
    manager = KVCacheManager(backend, snapshots=SnapshotStore(store, "gemma3"), min_snapshot_tokens=8)
    with Engine(backend, manager) as engine:
        for tokens in prompts + prompts[::-1]:
            check(engine, tokens)
        check(engine, prompts[0])  # a repeat: the working cache, cut back by its reply
        assert check(engine, prompts[0]) == len(prompts[0]) - 1
        # A conversation: the next turn extends prompt + reply; another one in between
        # parks it, and the restored state serves the whole of it.
        reply = expected[tuple(prompts[3])]
        follow = prompts[3] + reply[:-1] + backend.tokenize(" The end", add_bos=False)
        expected[tuple(follow)] = greedy_no_cache(gemma3_path, follow)
        check(engine, prompts[3])
        check(engine, prompts[1])
        restores = manager.stats.restores
        assert check(engine, follow) == len(prompts[3]) + len(reply) - 1
        assert manager.stats.restores == restores + 1
        stats = manager.stats
        assert stats.reused_tokens > 0 and stats.refused_tokens > 0
    # A restart: the snapshot of the last conversation serves its next turn.
    backend = load(gemma3_path)
    manager = KVCacheManager(backend, snapshots=SnapshotStore(store, "gemma3"), min_snapshot_tokens=8)
    with Engine(backend, manager) as engine:
        follow_reply = expected[tuple(follow)]
        again = follow + follow_reply[:-1] + backend.tokenize(" Bye", add_bos=False)
        expected[tuple(again)] = greedy_no_cache(gemma3_path, again)
        assert check(engine, again) == len(follow) + len(follow_reply) - 1
        assert manager.stats.snapshot_loads == 1
        for tokens in prompts:  # snapshots that cannot be cut back this far are not used
            check(engine, tokens)


def greedy_no_cache(path: Path, tokens) -> list[int]:
    with Engine(load(path)) as engine:
        engine.caches.enabled = False
        return greedy(engine, tokens)[0]
