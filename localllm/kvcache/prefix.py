"""Token-prefix arithmetic shared by the cache manager, snapshots and the engine."""

from __future__ import annotations

from typing import Sequence


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def splice_onto_cache(held: Sequence[int], prompt: Sequence[int], token_bytes) -> list[int] | None:
    """`prompt` with its first part replaced by `held`, when they spell the same bytes.

    A chat's next prompt re-tokenizes the model's last reply from text, which need not
    give the tokens the model generated (and holds in its cache). When the bytes of
    `held` past the common prefix equal the bytes of some run of prompt tokens, the
    model's own tokens can stand for that run: the cache is reused up to its end, and
    the rest of the prompt (template markup, the new message) keeps its own tokens.
    Returns None when no such run exists. Tokens without bytes (control tokens) never
    take part, so no control token is lost or invented.
    """
    d = common_prefix_length(held, prompt)
    if d == len(held) or d == len(prompt):
        return None
    tail = b"".join(token_bytes(t) for t in held[d:])
    if not tail or any(not token_bytes(t) for t in held[d:]):
        return None
    run = bytearray()
    k = d
    while k < len(prompt) and len(run) < len(tail):
        piece = token_bytes(prompt[k])
        if not piece:
            return None
        run += piece
        k += 1
    if run != tail or k >= len(prompt):
        return None
    return list(held) + list(prompt[k:])
