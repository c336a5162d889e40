"""What is particular to the llama.cpp backend on stories260K: sequence ids, byte-fallback
pieces, the memory report. The protocol's rules are in test_conformance.py."""

from pathlib import Path

from localllm.engine.detokenizer import StreamingDetokenizer


def test_closed_caches_return_their_sequence(stories_backend):
    n = min(3, stories_backend.n_sequences)
    caches = [stories_backend.new_cache() for _ in range(n)]
    ids = {c.seq_id for c in caches}
    for c in caches:
        c.close()
    again = [stories_backend.new_cache() for _ in range(n)]
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


def test_streams_keep_the_live_caches_at_the_lowest_sequence_ids(stories_path):
    """With a KV stream per sequence (--parallel above 1), a closed cache's id is taken by
    the live cache with the highest id (llama.cpp batches streams of consecutive ids
    only), which goes on exactly where it was; one cache more than the streams is a clear
    error, never a hang or a crash."""
    import numpy as np
    import pytest

    from localllm.backend.select import load_backend
    from localllm.config import Settings

    backend = load_backend(str(stories_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                                                       ctx_size=256, threads=1, parallel=3, flash_attn="off"))
    try:
        assert backend.streams and backend.n_sequences == 3
        vocab = backend.vocabulary
        prompts = [vocab.encode(t) for t in ("Once upon a time", "The little dog", "Tom went to the park")]
        caches = [backend.new_cache() for _ in prompts]
        assert [c.seq_id for c in caches] == [0, 1, 2]
        for cache, prompt in zip(caches, prompts):
            backend.forward(prompt, cache)
        with pytest.raises(RuntimeError, match="all 3 KV streams .* in use"):
            backend.new_cache()
        caches[0].close()
        assert caches[2].seq_id == 0 and caches[2].tokens == prompts[2]
        got = np.array(backend.forward([13], caches[2]).numpy())
        fresh = backend.new_cache()
        assert fresh.seq_id == 2
        backend.forward(prompts[2], fresh)
        assert np.array_equal(got, backend.forward([13], fresh).numpy())
        for cache in (caches[1], caches[2], fresh):
            cache.close()
    finally:
        backend.close()


def _smollm(path, parallel: int, flash_attn: str):
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    return load_backend(str(path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=512,
                                            threads=1, parallel=parallel, flash_attn=flash_attn, draft="none"))


def test_a_prompt_chunk_beside_decoding_streams_computes_what_it_computes_alone(smollm_path):
    """Several sequences decode in KV streams of their own; a prompt's later chunk fed in
    the same step as other sequences' tokens gives, row for row, the logits it gives
    alone. llama.cpp would split it (one token in the micro-batch shared with the others,
    the rest after), and without flash attention a sequence's single token is computed by
    another kernel than several (ggml's dot products, llamafile's sgemm), rounding
    otherwise: SmolLM2's logits differed by up to 0.76 for such a token."""
    import numpy as np

    from localllm.backend.protocol import BatchItem

    backend = _smollm(smollm_path, 4, "off")
    try:
        assert backend.streams and not backend.flash_attn
        vocab = backend.vocabulary
        text = vocab.encode("Tom and Sue went to the park to play with their dog, who loved to chase the ball all day")
        others = [vocab.encode("Once upon a time"), vocab.encode("The little dog")]
        for cut, chunk in [(4, 3), (5, 2), (9, 6), (11, 2), (14, 6), (19, 2)]:
            alone = backend.new_cache()
            backend.forward(text[:cut], alone)
            expected = np.array(backend.forward(text[cut:cut + chunk], alone, all_logits=True).numpy())
            alone.close()
            caches = [backend.new_cache() for _ in range(3)]
            for cache, prompt in zip(caches, others):
                backend.forward(prompt, cache)
            backend.forward(text[:cut], caches[2])
            rows = backend.forward_batch([BatchItem(caches[0], [vocab.encode(" there")[0]]),
                                          BatchItem(caches[1], [vocab.encode(" ran")[0]]),
                                          BatchItem(caches[2], text[cut:cut + chunk], True)])
            assert np.array_equal(rows[2].numpy(), expected), (cut, chunk)
            assert [len(c.tokens) for c in caches] == [len(others[0]) + 1, len(others[1]) + 1, cut + chunk]
            for cache in caches:
                cache.close()
    finally:
        backend.close()


def test_drafts_and_prompt_chunks_of_several_streams_share_passes_and_compute_what_they_compute_alone(smollm_path):
    """Items of several tokens beside each other (the drafts of several streams, prompts
    arriving together) are fed in passes of as many tokens of each (equal_passes), each
    computing row for row what it computes alone, one-token items beside them included."""
    import numpy as np

    from localllm.backend.protocol import BatchItem
    from localllm.cpu_backend.llamacpp import equal_passes

    assert equal_passes([(0, 4), (1, 4), (2, 6)]) == [[(0, 0, 4), (1, 0, 4), (2, 0, 4)], [(2, 4, 6)]]
    assert equal_passes([(0, 40), (1, 41)]) == [[(0, 0, 40)], [(1, 0, 41)]]
    assert equal_passes([(5, 7), (3, 5), (9, 2)]) == [[(5, 0, 2), (3, 0, 2), (9, 0, 2)], [(5, 2, 5), (3, 2, 5)], [(5, 5, 7)]]
    for lengths in ([(0, 2), (1, 3), (2, 9), (3, 9)], [(0, 30), (1, 31), (2, 33), (3, 2)]):
        fed = {}
        for segments in equal_passes(lengths):
            assert len({hi - lo for _, lo, hi in segments}) == 1
            for key, lo, hi in segments:
                assert fed.get(key, 0) == lo and hi - lo >= 2
                fed[key] = hi
        assert fed == dict(lengths)

    backend = _smollm(smollm_path, 4, "off")
    try:
        assert backend.streams and not backend.flash_attn
        vocab = backend.vocabulary
        texts = [vocab.encode(t) for t in ("Tom and Sue went to the park to play with their dog, who loved to chase",
                                           "Once upon a time there was a little girl named Lily who liked to",
                                           "The big red ball rolled down the hill and into the pond where the",
                                           "A small bird sat on the branch of the old oak tree and sang a song")]
        for cuts, lengths in [((5, 6, 7, 4), (4, 4, 1, 6)), ((3, 3, 3, 3), (5, 6, 2, 5)), ((4, 2, 6, 3), (1, 9, 8, 1))]:
            expected = []
            for text, cut, n in zip(texts, cuts, lengths):
                alone = backend.new_cache()
                backend.forward(text[:cut], alone)
                expected.append(np.array(backend.forward(text[cut:cut + n], alone, all_logits=True).numpy()))
                alone.close()
            caches = [backend.new_cache() for _ in texts]
            for cache, text, cut in zip(caches, texts, cuts):
                backend.forward(text[:cut], cache)
            rows = backend.forward_batch([BatchItem(cache, text[cut:cut + n], True)
                                          for cache, text, cut, n in zip(caches, texts, cuts, lengths)])
            for k, (got, want) in enumerate(zip(rows, expected)):
                assert np.array_equal(got.numpy(), want), (cuts, lengths, k)
            assert [len(c.tokens) for c in caches] == [c + n for c, n in zip(cuts, lengths)]
            for cache in caches:
                cache.close()
    finally:
        backend.close()


def test_a_cached_prompt_fed_its_last_tokens_again_gets_the_logits_of_the_whole_pass(smollm_path):
    """The KV-cache manager feeds a cached prompt's last FED_AT_LEAST tokens again
    (kvcache/manager.py): those logits must be the ones the whole prompt's pass gave, so a
    prompt sent twice gets the same greedy reply. Without flash attention llama.cpp
    computes a lone token of a sequence by other kernels than several, and the last token
    fed alone differed from the whole pass for some prefixes (SmolLM2: up to 0.76)."""
    import numpy as np

    from localllm.kvcache.manager import FED_AT_LEAST

    backend = _smollm(smollm_path, 1, "off")
    try:
        assert not backend.flash_attn and FED_AT_LEAST >= 2
        text = backend.vocabulary.encode("Once upon a time, a little girl named Lily found a shiny red ball "
                                         "under the big green tree in the park near her house, and she ran home")
        lone_differs = 0
        for n in range(6, len(text) + 1):
            whole = backend.new_cache()
            expected = np.array(backend.forward(text[:n], whole).numpy(-1))
            whole.close()
            for fed in (FED_AT_LEAST, 1):
                cache = backend.new_cache()
                backend.forward(text[:n - fed], cache)
                got = np.array(backend.forward(text[n - fed:n], cache).numpy(-1))
                cache.close()
                if fed == 1:
                    lone_differs += not np.array_equal(got, expected)
                else:
                    assert np.array_equal(got, expected), n
        print(f"the last token fed alone differed from the whole pass for {lone_differs} of {len(text) - 5} prefixes")
    finally:
        backend.close()
