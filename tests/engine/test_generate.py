"""The generation loop as producer and consumer: whatever yields the tokens, the consumer
applies the same end-of-generation, stop-string, limit and stats rules. On the numpy
reference backend: llama.cpp is not the point here."""

from __future__ import annotations

import pytest

from localllm.engine import Engine
from localllm.engine.generate import ProducedToken, generate, plain_decoding
from localllm.kvcache import KVCacheManager
from localllm.types import GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0)


def replaying(script: list[tuple[int, bool]], closed: list[bool]):
    """A producer that yields `script`'s (token, from_draft) pairs, feeding each to the
    cache as a real producer would, and records that it was closed."""

    def producer(backend, cache, logits, sampler, history, stats):
        try:
            for i, (token, from_draft) in enumerate(script):
                if i:
                    backend.forward((script[i - 1][0],), cache)
                history.append(token)
                stats.draft_tokens += from_draft
                yield ProducedToken(token, from_draft)
        finally:
            closed.append(True)

    return producer


def run(backend, request, producer=plain_decoding):
    cache = backend.new_cache()
    try:
        chunks = list(generate(backend, cache, request, producer=producer))
        return chunks, list(cache.tokens)
    finally:
        cache.close()


def test_plain_decoding_marks_nothing_from_draft(numpy_backend):
    prompt = tuple(numpy_backend.vocabulary.encode("Once upon a time"))
    chunks, _ = run(numpy_backend, GenerationRequest(prompt, GREEDY, max_tokens=8))
    assert [c.from_draft for c in chunks[:-1]] == [False] * 8
    assert chunks[-1].finish_reason == "length" and chunks[-1].stats.accepted_tokens == 0


def test_another_producer_gets_the_same_consumer(numpy_backend):
    """Draft flags reach the chunks and the stats; the consumer stops at the limit and
    closes the producer; the text is the detokenized tokens."""
    vocab = numpy_backend.vocabulary
    prompt = tuple(vocab.encode("Once upon a time"))
    words = vocab.encode("there was a big dog named Max", add_bos=False)
    script = [(t, i % 2 == 1) for i, t in enumerate(words)]
    closed: list[bool] = []
    chunks, held = run(numpy_backend, GenerationRequest(prompt, GREEDY, max_tokens=5), replaying(script, closed))
    body, last = chunks[:-1], chunks[-1]
    assert [c.token for c in body] == words[:5]
    assert [c.from_draft for c in body] == [False, True, False, True, False]
    assert last.finish_reason == "length" and closed == [True]
    assert last.stats.accepted_tokens == 2 and last.stats.generated_tokens == 5
    assert "".join(c.text for c in chunks) == b"".join(vocab.token_bytes(t) for t in words[:5]).decode()
    # The last token is never fed: the cache holds the prompt and the tokens before it.
    assert held == list(prompt) + words[:4]


def test_stop_string_and_end_token_end_any_producer(numpy_backend):
    vocab = numpy_backend.vocabulary
    prompt = tuple(vocab.encode("Once upon a time"))
    words = vocab.encode("there was a big dog", add_bos=False)
    closed: list[bool] = []
    chunks, _ = run(numpy_backend, GenerationRequest(prompt, GREEDY, max_tokens=50, stop=("big",)),
                    replaying([(t, True) for t in words], closed))
    assert "".join(c.text for c in chunks) == " there was a "
    assert chunks[-1].finish_reason == "stop" and closed == [True]
    eos = vocab.eos_id
    chunks, _ = run(numpy_backend, GenerationRequest(prompt, GREEDY, max_tokens=50),
                    replaying([(words[0], False), (eos, True), (words[1], False)], closed))
    assert [c.token for c in chunks] == [words[0], None]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stats.generated_tokens == 1


def test_the_cache_must_hold_a_proper_prefix_of_the_prompt(numpy_backend):
    vocab = numpy_backend.vocabulary
    prompt = vocab.encode("Once upon a time")
    cache = numpy_backend.new_cache()
    try:
        numpy_backend.forward(vocab.encode("The dog"), cache)
        with pytest.raises(ValueError, match="proper prefix"):
            next(generate(numpy_backend, cache, GenerationRequest(tuple(prompt), GREEDY)))
        numpy_backend.trim(cache, 0)
        numpy_backend.forward(prompt[:3], cache)
        chunks = list(generate(numpy_backend, cache, GenerationRequest(tuple(prompt), GREEDY, max_tokens=3)))
        assert chunks[-1].stats.cached_tokens == 3
    finally:
        cache.close()


def test_the_manager_decides_reuse_and_the_reply_is_what_a_cold_cache_gives(numpy_backend):
    """Through the engine: a follow-up prompt reuses the cached prefix the manager lends
    (only the rest is fed), and greedy output equals that of a manager that reuses nothing."""
    vocab = numpy_backend.vocabulary
    first = tuple(vocab.encode("Once upon a time, there was a cat"))
    second = tuple(vocab.encode("Once upon a time, there was a cat named Tom"))
    warm = Engine(numpy_backend, KVCacheManager(numpy_backend))
    cold = Engine(numpy_backend, KVCacheManager(numpy_backend, enabled=False))
    try:
        warm.submit(GenerationRequest(first, GREEDY, max_tokens=4)).text()
        handle = warm.submit(GenerationRequest(second, GREEDY, max_tokens=12))
        text = handle.text()
        # At least the first prompt; its reply too where the follow-up repeats it.
        assert len(first) <= handle.stats.cached_tokens < len(second) == handle.stats.prompt_tokens
        reference = cold.submit(GenerationRequest(second, GREEDY, max_tokens=12))
        assert text == reference.text() and reference.stats.cached_tokens == 0
    finally:
        for engine in (warm, cold):
            engine._requests.put((None, None))  # stop the threads; the shared backend stays open
            engine._thread.join()
