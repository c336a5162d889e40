"""The prompt-lookup drafter: longest then most recent match, an index kept per token;
a confirmed copy is followed, and a broken copy resumed near where it broke."""

from __future__ import annotations

import random

import pytest

from localllm.speculative.drafter import Draft
from localllm.speculative.prompt_lookup import PromptLookupDrafter, match_class


def rescan_lookup(tokens, ngram_max, ngram_min):
    """What the n-gram lookup must find, the slow way: scan the whole context."""
    size = len(tokens)
    for n in range(min(ngram_max, size), ngram_min - 1, -1):
        suffix = tokens[size - n:]
        for end in range(size - 1, n - 1, -1):  # most recent first; `end` = index after the match
            if end < size and tokens[end - n:end] == suffix:
                return end, n
    return None


def test_proposes_what_followed_the_last_occurrence():
    d = PromptLookupDrafter([5, 6, 7, 8, 9, 1, 5, 6], ngram_max=3)
    assert d.propose(3) == Draft((7, 8, 9), 2)
    assert d.propose(1) == Draft((7,), 2)


def test_prefers_the_longest_match_over_a_more_recent_shorter_one():
    # "2 3" last occurred followed by 9, but "1 2 3" (longer) was followed by 4.
    d = PromptLookupDrafter([1, 2, 3, 4, 0, 2, 3, 9, 1, 2, 3], ngram_max=3)
    assert d.propose(2) == Draft((4, 0), 3)


def test_prefers_the_most_recent_of_equally_long_matches():
    d = PromptLookupDrafter([1, 2, 7, 1, 2, 8, 1, 2], ngram_max=2)
    assert d.propose(1) == Draft((8,), 2)


def test_no_match_no_proposal_and_ngram_min_is_respected():
    assert PromptLookupDrafter([1, 2, 3, 4]).propose(4) is None
    d = PromptLookupDrafter([1, 2, 9, 3, 2], ngram_max=3, ngram_min=2)
    assert d.propose(2) is None  # only the 1-gram "2" matches
    assert PromptLookupDrafter([1, 2, 9, 3, 2], ngram_max=3, ngram_min=1).propose(2) == Draft((9, 3), 1)


def test_appended_tokens_extend_the_index():
    d = PromptLookupDrafter([10, 11, 12, 13], ngram_max=2)
    assert d.propose(2) is None
    for t in (10, 11):
        d.append(t)
    assert d.propose(3) == Draft((12, 13, 10), 2)


@pytest.mark.parametrize("seed", range(12))
def test_matches_a_full_rescan_at_every_step(seed):
    rng = random.Random(seed)
    vocab = rng.choice([3, 5, 20])
    ngram_max, ngram_min = rng.choice([(1, 1), (3, 1), (4, 2), (5, 3)])
    context = [rng.randrange(vocab) for _ in range(rng.randrange(0, 30))]
    d = PromptLookupDrafter(context, ngram_max, ngram_min)
    for _ in range(120):
        assert d.lookup() == rescan_lookup(context, ngram_max, ngram_min)
        token = rng.randrange(vocab)
        context.append(token)
        d.append(token)


def test_bad_ngram_lengths_are_refused():
    with pytest.raises(ValueError):
        PromptLookupDrafter([], ngram_max=1, ngram_min=2)
    with pytest.raises(ValueError):
        PromptLookupDrafter([], ngram_max=0, ngram_min=0)


def feed(drafter, tokens):
    for t in tokens:
        drafter.append(t)


def test_a_confirmed_copy_is_followed_past_an_ambiguous_ngram():
    # The source has "7 8" twice; the copy in progress is of the first one.
    source = [1, 2, 7, 8, 3, 4, 5, 6, 7, 8, 9]
    d = PromptLookupDrafter(source + [0, 1, 2], ngram_max=2)
    assert d.propose(4) == Draft((7, 8, 3, 4), 2)
    feed(d, [7, 8])  # the most recent "7 8" is followed by 9, the copy by 3
    assert d.propose(3) == Draft((3, 4, 5), match_class(4))
    feed(d, [3, 4, 5, 6, 7, 8, 9])
    assert d.propose(2).match_length == match_class(11) == 8


def test_a_broken_copy_resumes_just_after_the_replaced_part():
    # "x = 0 ; y = x ;" copied with a rename (50 where the source has 2).
    source = [10, 11, 1, 12, 13, 14, 2, 12, 1, 14, 15, 16, 12, 77, 99]
    d = PromptLookupDrafter(source, ngram_max=3)
    feed(d, [10, 11])
    assert d.propose(8) == Draft((1, 12, 13, 14, 2, 12, 1, 14), 2)
    feed(d, [50])  # the copy breaks after a run of 2: too short to resume near
    feed(d, [12])
    assert d.propose(2) == Draft((77, 99), 1)  # the most recent "12"
    d = PromptLookupDrafter(source, ngram_max=3)
    feed(d, [10, 11])
    assert d.propose(8) == Draft((1, 12, 13, 14, 2, 12, 1, 14), 2)
    feed(d, [1, 12, 13, 14, 50])  # a run of 6, then the rename where 2 stands (index 6)
    feed(d, [12])
    assert d.propose(3) == Draft((1, 14, 15), 1)  # the "12" just after the break


def test_resuming_prefers_a_match_near_the_break_over_a_more_recent_one():
    source = [5, 6, 7, 8, 9, 20, 21, 22, 23, 24, 25, 3, 30, 31]
    d = PromptLookupDrafter(source + [3, 40, 0], ngram_max=2)  # "3" last seen followed by 40
    feed(d, [5, 6, 7, 8, 9])
    assert d.propose(3) == Draft((20, 21, 22), 2)
    feed(d, [20, 21, 22, 23, 24])  # a long copy
    feed(d, [77])  # broken where 25 stands (index 10)
    feed(d, [3])
    assert d.propose(2) == Draft((30, 31), 1)  # the "3" just past the break, not the latest
    assert PromptLookupDrafter(source + [3, 40, 0, 77, 3]).propose(2) == Draft((40, 0), 1)


def test_match_classes():
    assert [match_class(n) for n in (1, 2, 3, 4, 7, 8, 15, 16, 99)] == [1, 2, 3, 4, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("seed", range(6))
def test_catching_up_in_one_batch_equals_indexing_every_token(seed):
    """Tokens appended while nothing is proposed (drafting off) are indexed at the next
    proposal, with the same outcome (proposals, copy state) as indexing each one at once."""
    rng = random.Random(seed)
    source = [rng.randrange(6) for _ in range(40)]
    eager, lazy = PromptLookupDrafter(source, 3), PromptLookupDrafter(source, 3)
    for step in range(300):
        token = source[step % 40] if rng.random() < 0.8 else rng.randrange(6)  # a copy with breaks
        if rng.random() < 0.2:  # both are asked now and then
            assert lazy.propose(4) == eager.propose(4)
        eager.append(token)
        eager._catch_up()
        lazy.append(token)
    assert lazy.propose(4) == eager.propose(4)
    assert lazy._ends == eager._ends
