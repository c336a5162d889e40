"""The drafter protocol: what speculative verification asks of whatever proposes tokens.

A drafter sees the whole context (prompt, then every token the model confirmed, one
`append` at a time, never a rejected draft) and proposes up to k tokens that might come
next. Verification (`localllm.speculative.verify`) feeds them to the model in one forward
pass and keeps the prefix the model agrees with. A drafter proposes, it never decides:
a bad draft costs time, never correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Draft:
    """Proposed next tokens and what backs them.

    `match_length`: how long the context match behind the proposal is (an n-gram length
    for prompt lookup); the adaptive controller keeps acceptance statistics per length,
    since a long match is far more often right than a one-token one.
    """

    tokens: tuple[int, ...]
    match_length: int = 0


class Drafter(Protocol):
    def append(self, token: int) -> None:
        """The model confirmed `token` as the next one of the context."""

    def propose(self, k: int) -> Draft | None:
        """Up to `k` (>= 1) tokens to follow the context, or None when there is no guess."""


class DrafterFactory(Protocol):
    def __call__(self, context: Sequence[int]) -> Drafter:
        """A drafter over `context` (the prompt); each generation gets its own."""
