"""What is particular to the llama.cpp backend on stories260K: sequence ids, byte-fallback
pieces, the memory report. The protocol's rules are in test_conformance.py."""

from localllm.engine.detokenizer import StreamingDetokenizer


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
