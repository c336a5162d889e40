"""What to do when a conversation no longer fits the context: never silently.

`refuse` raises a ContextOverflowError naming the numbers. `drop-oldest` keeps the
system prompt and the latest user message and drops the oldest turns until the prompt
plus the room reserved for the reply fits; the caller is told how many messages went.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Sequence

from localllm.errors import ContextOverflowError
from localllm.types import Message


class OverflowPolicy(str, Enum):
    REFUSE = "refuse"
    DROP_OLDEST = "drop-oldest"


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
    limit = n_ctx - reserve
    dropped = 0
    while len(tokens) > limit:
        first = 1 if kept and kept[0].role == "system" else 0
        if policy is not OverflowPolicy.DROP_OLDEST or len(kept) - first <= 1:
            raise ContextOverflowError(
                f"the conversation needs {len(tokens)} tokens plus {reserve} for the reply, "
                f"but the context holds {n_ctx}: start a new conversation, raise --ctx-size, "
                "or let old turns go (--overflow drop-oldest)"
            )
        # Drop the oldest turn: a user message and the reply that followed it.
        del kept[first]
        dropped += 1
        if len(kept) - first > 1 and kept[first].role == "assistant":
            del kept[first]
            dropped += 1
        tokens = encode(kept)
    return tokens, kept, dropped
