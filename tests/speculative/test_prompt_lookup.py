"""The prompt-lookup drafter: longest then most recent match, an index kept per token."""

from __future__ import annotations

import random

import pytest

from localllm.speculative.drafter import Draft
from localllm.speculative.prompt_lookup import PromptLookupDrafter


def rescan_proposal(tokens, k, ngram_max, ngram_min):
    """What the drafter must propose, found the slow way: scan the whole context."""
    size = len(tokens)
    for n in range(min(ngram_max, size), ngram_min - 1, -1):
        suffix = tokens[size - n:]
        for end in range(size - 1, n - 1, -1):  # most recent first; `end` = index after the match
            if end < size and tokens[end - n:end] == suffix:
                return Draft(tuple(tokens[end:end + k]), n)
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
        k = rng.randrange(1, 9)
        assert d.propose(k) == rescan_proposal(context, k, ngram_max, ngram_min)
        token = rng.randrange(vocab)
        context.append(token)
        d.append(token)


def test_bad_ngram_lengths_are_refused():
    with pytest.raises(ValueError):
        PromptLookupDrafter([], ngram_max=1, ngram_min=2)
    with pytest.raises(ValueError):
        PromptLookupDrafter([], ngram_max=0, ngram_min=0)
