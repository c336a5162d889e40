"""The model's own reply tokens stand in for a re-tokenized reply, control tokens never."""

from localllm.kvcache.prefix import splice_onto_cache

PIECES = {1: b"", 2: b"ab", 3: b"a", 4: b"b", 5: b"c", 6: b"", 7: b"x"}  # 1 and 6: control


def piece(t):
    return PIECES[t]


def test_same_bytes_different_tokens_are_spliced():
    held = [1, 3, 4]  # BOS, "a", "b": what the model generated
    prompt = [1, 2, 6, 7]  # BOS, "ab" re-tokenized, a control token, "x"
    assert splice_onto_cache(held, prompt, piece) == [1, 3, 4, 6, 7]


def test_splices_at_the_last_boundary_where_the_bytes_agree():
    # held spells "a" "b" "c"; the prompt "ab" "x": they agree up to "ab", then differ.
    assert splice_onto_cache([1, 3, 4, 5], [1, 2, 7, 7], piece) == [1, 3, 4, 7, 7]


def test_no_splice_when_bytes_differ_or_nothing_follows():
    assert splice_onto_cache([1, 5, 3], [1, 2, 6, 7], piece) is None
    assert splice_onto_cache([1, 3, 4], [1, 2], piece) is None
    assert splice_onto_cache([1, 3], [1, 3, 7], piece) is None  # already a prefix


def test_control_tokens_never_take_part():
    # The held tail has a control token: no byte run can stand for it.
    assert splice_onto_cache([1, 3, 6], [1, 3, 7, 7], piece) is None
    # A control token inside the prompt's run would be swallowed: refused.
    assert splice_onto_cache([1, 2], [1, 3, 6, 4, 7], piece) is None
