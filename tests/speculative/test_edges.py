"""Where a multi-token step meets the consumer's limits, and the cache afterwards.

A scripted drafter proposes plain decoding's own answer (so a whole draft is accepted
and the step yields many tokens at once) or a corrupted one (so a draft is rejected at a
chosen position). The consumer must stop at exactly the token plain decoding stops at,
and the cache must hold what plain decoding leaves: every yielded token but the last.
"""

from __future__ import annotations

import pytest

from tests.speculative.helpers import always_drafting, run, scripted

from localllm.engine.generate import plain_decoding


def prompt_of(backend, text="Tim had a red ball. He liked to play with his red ball. One day, Tim"):
    return backend.vocabulary.encode(text, add_bos=True)


def test_whole_drafts_accepted_yield_plain_tokens_and_leave_the_cache_as_plain(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, plain_cache = run(any_backend, prompt, plain_decoding, max_tokens=40)
    producer, drafters = scripted(plain, len(prompt), draft_max=8)
    spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=40)
    assert spec == plain
    stats = chunks[-1].stats
    assert stats.accepted_tokens >= 30  # nearly every token came from a draft
    assert cache.tokens == plain_cache.tokens == prompt + plain[:-1]


def test_rejected_drafts_are_cut_from_the_cache_at_every_step(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=40)
    box = {}
    producer, drafters = scripted(plain, len(prompt), draft_max=6, wrong={3, 4, 11, 20, 21, 22, 35},
                                  wrong_token=plain[0] + 1, cache_of=lambda: box["cache"])
    orig_new_cache = any_backend.new_cache

    class Recording:
        def __getattr__(self, name):
            return getattr(any_backend, name)

        def new_cache(self):
            box["cache"] = orig_new_cache()
            return box["cache"]

    spec, chunks, cache = run(Recording(), prompt, producer, max_tokens=40)
    assert spec == plain
    assert drafters[0].proposals > 5  # the cache was checked after every verification
    assert chunks[-1].stats.draft_tokens > chunks[-1].stats.accepted_tokens > 0
    assert cache.tokens == prompt + plain[:-1]


def test_max_tokens_reached_inside_an_accepted_draft(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=30)
    for limit in (1, 2, 5, 9):
        producer, _ = scripted(plain, len(prompt), draft_max=8, max_new_tokens=limit)
        spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=limit)
        assert spec == plain[:limit]
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].stats.draft_tokens <= max(0, limit - 1)  # nothing drafted past the limit
        assert cache.tokens == prompt + plain[:limit - 1]


def test_max_tokens_unknown_to_the_producer_still_cuts_at_the_right_token(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=30)
    producer, _ = scripted(plain, len(prompt), draft_max=8)  # drafts up to 8 past the limit
    spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=6)
    assert spec == plain[:6]
    assert cache.tokens == prompt + plain[:5]  # the verified extra tokens were cut in `finally`


def test_stop_string_inside_an_accepted_draft(any_backend):
    prompt = prompt_of(any_backend)
    plain, plain_chunks, _ = run(any_backend, prompt, plain_decoding, max_tokens=40)
    text = "".join(c.text for c in plain_chunks)
    stop = text[len(text) // 2: len(text) // 2 + 4]
    expected, expected_chunks, plain_cache = run(any_backend, prompt, plain_decoding, max_tokens=40, stop=[stop])
    producer, _ = scripted(plain, len(prompt), draft_max=8)
    spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=40, stop=[stop])
    assert "".join(c.text for c in chunks) == "".join(c.text for c in expected_chunks) == text[: text.index(stop)]
    assert chunks[-1].finish_reason == "stop"
    assert spec == expected
    assert cache.tokens == plain_cache.tokens
    assert chunks[-1].stats.accepted_tokens > 0


def test_end_token_inside_an_accepted_draft(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=40)
    end = plain[12]
    first = plain.index(end)  # the first time the "end" token comes
    producer, _ = scripted(plain, len(prompt), draft_max=8)
    spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=40, stop_token_ids={end})
    assert spec == plain[:first]
    assert chunks[-1].finish_reason == "stop"
    assert cache.tokens == prompt + plain[:first]  # the end token was yielded, not fed


def test_cancelled_in_the_middle_of_a_step(any_backend):
    prompt = prompt_of(any_backend)
    plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=40)
    seen = []

    def cancelled():
        seen.append(1)
        return len(seen) >= 4  # asked after each token: stop after the 4th

    producer, _ = scripted(plain, len(prompt), draft_max=8)
    spec, chunks, cache = run(any_backend, prompt, producer, max_tokens=40, cancelled=cancelled)
    assert spec == plain[:4]
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].stats.accepted_tokens == 3  # tokens 2-4 came from one draft
    assert cache.tokens == prompt + plain[:3]


def test_context_limit_is_never_passed(numpy_stories):
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer
    from tests.backends.reference_numpy import NumpyReferenceBackend

    small = NumpyReferenceBackend(numpy_stories.info.path, numpy_stories.vocabulary, ctx_size=48)
    prompt = prompt_of(small, "The cat sat on the mat. The dog sat on the mat. The cat sat on the mat. The dog")
    assert len(prompt) < 40
    plain, plain_chunks, _ = run(small, prompt, plain_decoding, max_tokens=None)
    assert len(plain) == small.n_ctx + 1 - len(prompt)
    for producer in (always_drafting(8, 2), scripted(plain, len(prompt), draft_max=8)[0]):
        spec, chunks, cache = run(small, prompt, producer, max_tokens=None)
        assert spec == plain
        assert chunks[-1].finish_reason == "length"
        assert len(cache.tokens) <= small.n_ctx
    del SentencePieceTokenizer


@pytest.mark.parametrize("kind", ["llamacpp", "mlx"])
def test_context_limit_is_never_passed_on_the_real_backends(stories_path, kind):
    """As above, on llama.cpp and MLX with a small context: drafts stop at its end, and the
    text and where it stops are plain decoding's."""
    from pathlib import Path

    from localllm.backend.select import load_backend
    from localllm.config import Settings

    if kind == "mlx":
        pytest.importorskip("mlx.core")
    small = load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                                                     backend=kind, ctx_size=64, threads=1))
    try:
        prompt = prompt_of(small, "The cat sat on the mat. The dog sat on the mat. The cat sat on the mat. The dog")
        plain, _, cache = run(small, prompt, plain_decoding, max_tokens=None)
        cache.close()
        assert len(plain) == small.n_ctx + 1 - len(prompt)
        for producer in (always_drafting(8, 2), scripted(plain, len(prompt), draft_max=8)[0]):
            spec, chunks, cache = run(small, prompt, producer, max_tokens=None)
            assert spec == plain
            assert chunks[-1].finish_reason == "length" and chunks[-1].stats.accepted_tokens > 0
            assert len(cache.tokens) <= small.n_ctx
            cache.close()
    finally:
        small.close()
