"""Prompt-lookup drafting: guess that the text continues as it did the last time the
same few tokens appeared in the context (the prompt and everything generated so far).

That is what happens when a model repeats, quotes, rewrites or refactors text it was
given: long runs of output tokens already stand somewhere in the prompt. The drafter
matches the context's last n tokens (n from `ngram_max` down to `ngram_min`, longest
first) against earlier occurrences, takes the most recent one, and proposes the tokens
that followed it.

Two refinements for text that copies with changes (a rename, an edit, a quote):
- Following: once a proposal's source is confirmed token by token, the next proposal
  continues from the same place, however ambiguous the last few tokens are elsewhere
  (`subtotal =` may stand three times in the code; the copy is at one of them). Its
  `match_length` is how many context tokens agree with the source (in classes 4-7, 8-15,
  16+), so the adaptive policy learns that a long copy is more often right than a short
  n-gram.
- Re-anchoring: where a long copy breaks (the model wrote `net_total` where the source
  has `subtotal`), the copy usually resumes just after the replaced part. For a while
  after the break, a match that ends shortly after the break point is preferred over a
  more recent or longer one elsewhere.

The index maps every n-gram of the context to where it occurred (the positions just past
it, oldest first); each confirmed token adds the n-grams ending at its predecessor
(those now have a continuation), so each token costs `ngram_max - ngram_min
+ 1` dictionary updates and a proposal costs at most twice as many lookups (plus a
binary search while re-anchoring): nothing rescans the context per step. The index is
brought up to date when a proposal is asked for, over the tokens appended since the last
one, so the prompt is indexed only if something is ever proposed, and steps in which the
adaptive policy drafts nothing cost no indexing.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

from localllm.speculative.drafter import Draft

DEFAULT_NGRAM_MAX = 3
DEFAULT_NGRAM_MIN = 1
# A copy that agreed for this many tokens before it broke is worth re-anchoring near.
RESUME_MIN_RUN = 4
# How far past the break point a resumed copy may start, and for how many confirmed
# tokens after the break the preference holds (a rename replaces a few tokens).
RESUME_WINDOW = 24
RESUME_SPAN = 24


def match_class(length: int) -> int:
    """The acceptance-statistics class of a match of `length` tokens: 1, 2, 3, then 4-7,
    8-15 and 16+ share one class each (so the classes of a long copy learn fast)."""
    if length < 4:
        return length
    return 1 << (min(length, 16).bit_length() - 1)


class PromptLookupDrafter:
    """A `Drafter` over one growing context."""

    def __init__(self, context: Sequence[int], ngram_max: int = DEFAULT_NGRAM_MAX,
                 ngram_min: int = DEFAULT_NGRAM_MIN):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min} and {ngram_max}")
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.tokens: list[int] = []
        # n-gram (a tuple of n tokens) -> indices just past its occurrences that have at
        # least one token after them, ascending; one dict for all n (keys differ in length).
        self._ends: dict[tuple[int, ...], list[int]] = {}
        self._follow: int | None = None  # source index the next context token should equal
        self._run = 0  # context tokens that agree with the source before `_follow`
        self._resume: int | None = None  # source index where the last long copy broke
        self._resume_until = 0  # context length after which the break no longer counts
        self.tokens.extend(context)
        self._indexed = 0  # tokens[:_indexed] are in the index and the copy state

    def append(self, token: int) -> None:
        """Only stores the token: the index and the copy state catch up when a proposal
        needs them (`_catch_up`), so steps that propose nothing (the adaptive policy has
        drafting off) cost a list append."""
        self.tokens.append(token)

    def _catch_up(self) -> None:
        """Index the tokens appended since the last proposal and follow the copy state
        through them, exactly as if each had been indexed when it came."""
        tokens, ends = self.tokens, self._ends
        ngram_min, ngram_max = self.ngram_min, self.ngram_max
        for end in range(self._indexed, len(tokens)):
            # The n-grams ending at `end` now get tokens[end] as their continuation.
            for n in range(ngram_min, min(ngram_max, end) + 1):
                key = tuple(tokens[end - n:end])
                found = ends.get(key)
                if found is None:
                    ends[key] = [end]
                else:
                    found.append(end)
            follow = self._follow
            if follow is not None:
                if tokens[follow] == tokens[end]:
                    self._follow, self._run = follow + 1, self._run + 1
                else:
                    if self._run >= RESUME_MIN_RUN:
                        self._resume, self._resume_until = follow, end + RESUME_SPAN
                    self._follow, self._run = None, 0
        self._indexed = len(tokens)

    def propose(self, k: int) -> Draft | None:
        if self._indexed < len(self.tokens):
            self._catch_up()
        tokens, size = self.tokens, len(self.tokens)
        follow = self._follow
        if follow is not None and self._run >= self.ngram_max:
            return Draft(tuple(tokens[follow:follow + k]), match_class(self._run))
        found = self._resumed() if self._resume is not None else None
        if found is None:
            found = self.lookup()
        if follow is not None and (found is None or found[1] <= self._run):
            found = follow, self._run  # a short copy still agrees: keep to it over an equal match
        if found is None:
            return None
        start, n = found
        self._follow, self._run = start, n
        return Draft(tuple(tokens[start:start + k]), match_class(n))

    def lookup(self) -> tuple[int, int] | None:
        """(where the continuation starts, n) for the longest n-gram ending the context
        that occurred before, at its most recent occurrence; None without a match."""
        if self._indexed < len(self.tokens):
            self._catch_up()
        tokens, size = self.tokens, len(self.tokens)
        for n in range(min(self.ngram_max, size), self.ngram_min - 1, -1):
            ends = self._ends.get(tuple(tokens[size - n:]))
            if ends is not None:
                return ends[-1], n
        return None

    def _resumed(self) -> tuple[int, int] | None:
        """The longest match ending within RESUME_WINDOW tokens past the last break
        point, nearest first, while the break is recent."""
        tokens, size = self.tokens, len(self.tokens)
        if size > self._resume_until:
            self._resume = None
            return None
        resume = self._resume
        for n in range(min(self.ngram_max, size), self.ngram_min - 1, -1):
            ends = self._ends.get(tuple(tokens[size - n:]))
            if ends is None:
                continue
            i = bisect_left(ends, resume + 1)  # a match ending at `resume` would re-copy the break
            if i < len(ends) and ends[i] <= resume + RESUME_WINDOW:
                return ends[i], n
        return None


def prompt_lookup_factory(ngram_max: int = DEFAULT_NGRAM_MAX, ngram_min: int = DEFAULT_NGRAM_MIN):
    """A `DrafterFactory` making `PromptLookupDrafter`s with these n-gram lengths."""
    def make(context: Sequence[int]) -> PromptLookupDrafter:
        return PromptLookupDrafter(context, ngram_max, ngram_min)
    return make
