"""The context rule, and what to do when a conversation no longer fits: never silently.

`fits` is the one place the rule is written: a prompt fits when it and the room kept for
the reply (at least the one token its last position predicts) fit the context;
`check_context` raises a ContextOverflowError with the numbers when it does not. For a
conversation, `refuse` raises it; `drop-oldest` keeps the system prompt and the latest
user message and drops the oldest turns until it fits; the caller is told how many went.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Sequence

from localllm.errors import ContextOverflowError
from localllm.types import Message


class OverflowPolicy(str, Enum):
    REFUSE = "refuse"
    DROP_OLDEST = "drop-oldest"


def fits(n_prompt: int, n_ctx: int, reserve: int = 1) -> bool:
    """Whether `n_prompt` tokens and `reserve` more (at least one) fit `n_ctx`."""
    return n_prompt + max(1, reserve) <= n_ctx


def check_context(n_prompt: int, n_ctx: int, reserve: int = 1, advice: str | None = None) -> None:
    """Raise ContextOverflowError (with `advice`, or the command line's) unless it `fits`."""
    reserve = max(1, reserve)
    if not fits(n_prompt, n_ctx, reserve):
        if advice is None:
            raise ContextOverflowError(n_prompt, n_ctx, reserve)
        raise ContextOverflowError(n_prompt, n_ctx, reserve, advice)


def fit_messages(
    messages: Sequence[Message],
    encode: Callable[[Sequence[Message]], list[int]],
    n_ctx: int,
    reserve: int,
    policy: OverflowPolicy = OverflowPolicy.REFUSE,
) -> tuple[list[int], list[Message], int]:
    """Return (prompt tokens, messages kept, number of messages dropped)."""
    kept = list(messages)
    tokens = encode(kept)
    dropped = 0
    while not fits(len(tokens), n_ctx, reserve):
        first = 1 if kept and kept[0].role == "system" else 0
        if policy is not OverflowPolicy.DROP_OLDEST or len(kept) - first <= 1:
            check_context(len(tokens), n_ctx, reserve, "start a new conversation, raise --ctx-size, "
                          "or let old turns go (--overflow drop-oldest)")
        # Drop the oldest turn: a user message and the reply that followed it.
        del kept[first]
        dropped += 1
        if len(kept) - first > 1 and kept[first].role == "assistant":
            del kept[first]
            dropped += 1
        tokens = encode(kept)
    return tokens, kept, dropped
