"""The llama.cpp backend on the real stories260K model: golden output, logits, caches."""

import numpy as np

from localllm.engine.detokenizer import StreamingDetokenizer
from localllm.engine.generate import generate
from localllm.types import GenerationRequest, SamplingParams
from conftest import require_model

GREEDY = SamplingParams(temperature=0)


def test_greedy_from_bos_reproduces_llama2c_reference(stories_backend):
    reference = require_model("stories260K/greedy-reference.txt").read_text()
    cache = stories_backend.new_cache()
    try:
        # llama2.c's reference is its default 256 steps, then a newline.
        request = GenerationRequest((stories_backend.vocabulary.bos_id,), GREEDY, max_tokens=256)
        text = "".join(c.text for c in generate(stories_backend, cache, request))
    finally:
        cache.close()
    assert text == reference.rstrip("\n")


def test_all_logits_match_one_token_at_a_time(stories_backend):
    b = stories_backend
    tokens = b.vocabulary.encode("Once upon a time, there was a dog.")
    batch_cache, step_cache = b.new_cache(), b.new_cache()
    try:
        all_logits = b.forward(tokens, batch_cache, all_logits=True).numpy().copy()
        assert all_logits.shape == (len(tokens), b.vocab_size)
        for i, t in enumerate(tokens):
            step = b.forward([t], step_cache).numpy(-1)
            # Batched and one-by-one matmuls round differently in f16; the choice agrees.
            np.testing.assert_allclose(step, all_logits[i], rtol=0, atol=1e-2)
            assert np.argmax(step) == np.argmax(all_logits[i])
        assert batch_cache.tokens == tokens == step_cache.tokens
    finally:
        batch_cache.close()
        step_cache.close()


def test_trim_then_refeed_gives_the_same_logits(stories_backend):
    b = stories_backend
    tokens = b.vocabulary.encode("The cat sat on the mat and looked at the bird.")
    cache = b.new_cache()
    try:
        full = b.forward(tokens, cache).numpy(-1).copy()
        b.trim(cache, 4)
        assert cache.tokens == tokens[:4]
        again = b.forward(tokens[4:], cache).numpy(-1).copy()
        np.testing.assert_allclose(again, full, rtol=0, atol=1e-2)
    finally:
        cache.close()


def test_closed_caches_return_their_sequence(stories_backend):
    caches = [stories_backend.new_cache() for _ in range(3)]
    ids = {c.seq_id for c in caches}
    for c in caches:
        c.close()
    again = [stories_backend.new_cache() for _ in range(3)]
    assert {c.seq_id for c in again} == ids
    for c in again:
        c.close()


def test_streaming_detokenizer_never_splits_a_character(stories_backend):
    b = stories_backend
    text = "héllo 日本語 ☃ ok"
    tokens = b.vocabulary.encode(text, add_bos=False)
    # The 512-piece vocabulary spells these characters as byte-fallback tokens.
    assert len(tokens) > len(text.split())
    detok = StreamingDetokenizer(b.vocabulary.token_bytes, strip_leading_space=True)
    pieces = [detok.add(t) for t in tokens] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # Some token completed no character: the decoder really held bytes back.
    assert "" in pieces[:-1]


def test_memory_report_counts_weights_and_kv(stories_backend):
    mem = stories_backend.memory()
    assert 1_000_000 < mem.weights_bytes < 2_000_000  # 292.8K F32 parameters
    # 5 layers x 4 KV heads x (8 + 8) dims x 2 bytes per token (f16)
    assert stories_backend.kv_cells >= stories_backend.n_ctx
    assert mem.kv_cache_bytes == stories_backend.kv_cells * 5 * 4 * 16 * 2
    assert stories_backend.kv_bytes_per_token == 5 * 4 * 16 * 2
