"""The streaming detokenizer holds incomplete UTF-8 back and strips BOS's leading space."""

from localllm.engine.detokenizer import StreamingDetokenizer

PIECES = {1: " hello", 2: "é".encode()[:1], 3: "é".encode()[1:], 4: "日".encode()[:1], 5: "日".encode()[1:2], 6: "日".encode()[2:]}


def piece(t):
    v = PIECES[t]
    return v.encode() if isinstance(v, str) else v


def test_multibyte_characters_split_over_tokens():
    d = StreamingDetokenizer(piece)
    assert [d.add(t) for t in [1, 2, 3, 4, 5, 6]] == [" hello", "", "é", "", "", "日"]


def test_leading_space_stripped_once():
    d = StreamingDetokenizer(piece, strip_leading_space=True)
    assert d.add(1) == "hello"
    assert d.add(1) == " hello"


def test_incomplete_tail_is_dropped_at_the_end():
    d = StreamingDetokenizer(piece)
    assert d.add(4) == "" and d.add(5) == ""
    assert d.flush() == ""


def test_invalid_bytes_still_show_as_replacement_characters():
    d = StreamingDetokenizer(lambda t: b"\xff" if t == 9 else piece(t))
    assert d.add(9) == "\ufffd"
    assert d.add(1) == " hello" and d.flush() == ""
