"""Prompt-lookup drafting: guess that the text continues as it did the last time the
same few tokens appeared in the context (the prompt and everything generated so far).

That is what happens when a model repeats, quotes, rewrites or refactors text it was
given: long runs of output tokens already stand somewhere in the prompt. The drafter
matches the context's last n tokens (n from `ngram_max` down to `ngram_min`, longest
first) against earlier occurrences, takes the most recent one, and proposes the tokens
that followed it.

The index maps every n-gram of the context to where it last ended; `append` updates it
with the n-grams ending at the newly confirmed token's predecessor (those now have a
continuation), so each token costs `ngram_max - ngram_min + 1` dictionary writes and a
proposal costs at most as many lookups: nothing rescans the context per step.
"""

from __future__ import annotations

from typing import Sequence

from localllm.speculative.drafter import Draft

DEFAULT_NGRAM_MAX = 3
DEFAULT_NGRAM_MIN = 1


class PromptLookupDrafter:
    """A `Drafter` over one growing context."""

    def __init__(self, context: Sequence[int], ngram_max: int = DEFAULT_NGRAM_MAX,
                 ngram_min: int = DEFAULT_NGRAM_MIN):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min} and {ngram_max}")
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.tokens: list[int] = []
        # n-gram (a tuple of n tokens) -> index just past its most recent occurrence that
        # has at least one token after it; one dict for all n (keys differ in length).
        self._next_after: dict[tuple[int, ...], int] = {}
        for token in context:
            self.append(token)

    def append(self, token: int) -> None:
        tokens = self.tokens
        end = len(tokens)  # the n-grams ending here now get `token` as their continuation
        for n in range(self.ngram_min, min(self.ngram_max, end) + 1):
            self._next_after[tuple(tokens[end - n:end])] = end
        tokens.append(token)

    def propose(self, k: int) -> Draft | None:
        tokens, size = self.tokens, len(self.tokens)
        for n in range(min(self.ngram_max, size), self.ngram_min - 1, -1):
            start = self._next_after.get(tuple(tokens[size - n:]))
            if start is not None:
                return Draft(tuple(tokens[start:start + k]), n)
        return None


def prompt_lookup_factory(ngram_max: int = DEFAULT_NGRAM_MAX, ngram_min: int = DEFAULT_NGRAM_MIN):
    """A `DrafterFactory` making `PromptLookupDrafter`s with these n-gram lengths."""
    def make(context: Sequence[int]) -> PromptLookupDrafter:
        return PromptLookupDrafter(context, ngram_max, ngram_min)
    return make
