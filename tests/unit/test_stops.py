"""Stop strings are never emitted, also when split across tokens."""

from localllm.engine.stops import StopMatcher


def feed_all(stops, pieces):
    m = StopMatcher(tuple(stops))
    out = []
    for p in pieces:
        out.append(m.feed(p))
        if m.stopped:
            return "".join(out), True
    out.append(m.flush())
    return "".join(out), False


def test_stop_inside_one_piece():
    assert feed_all(["END"], ["hello END world"]) == ("hello ", True)


def test_stop_split_across_pieces_is_not_emitted():
    m = StopMatcher(("</s>",))
    assert m.feed("abc<") == "abc"
    assert m.feed("/") == ""
    assert m.feed("s>tail") == ""
    assert m.stopped


def test_false_start_is_released():
    assert feed_all(["STOP"], ["ST", "OR", "Y"]) == ("STORY", False)


def test_held_text_is_flushed_at_the_end():
    assert feed_all(["###"], ["a #", "#"]) == ("a ##", False)


def test_earliest_of_several_stops_wins():
    assert feed_all(["world", "lo"], ["hel", "lo world"]) == ("hel", True)


def test_no_stops_passes_text_through():
    m = StopMatcher(())
    assert m.feed("x") == "x" and not m.stopped


def test_newline_stop_split_character_by_character():
    text, stopped = feed_all(["\n\n"], list("one\ntwo\n\nthree"))
    assert (text, stopped) == ("one\ntwo", True)
