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
    """`prompt` with its first part spelled by the cache's own tokens, where the bytes agree.

    A chat's next prompt re-tokenizes the model's last reply from text, which need not
    give the tokens the model generated (and holds in its cache). Past their common
    prefix, `held` and `prompt` are walked side by side over their bytes; the last point
    where both have spelled the same bytes at a token boundary is where the cache's
    tokens can hand over to the prompt's. Returns held[:j] + prompt[k:] for that point,
    or None when there is none beyond the common prefix. Tokens without bytes (control
    tokens) stop the walk, so no control token is ever lost or invented.
    """
    d = common_prefix_length(held, prompt)
    if d == len(held) or d == len(prompt):
        return None
    i = k = d
    held_bytes, prompt_bytes = bytearray(), bytearray()
    best = None
    while True:
        if len(held_bytes) == len(prompt_bytes):
            if held_bytes != prompt_bytes:
                break
            if i > d:
                best = (i, k)
            if i == len(held) or k == len(prompt):
                break
            step_held = step_prompt = True
        else:
            step_held = len(held_bytes) < len(prompt_bytes)
            step_prompt = not step_held
            shorter, longer = (held_bytes, prompt_bytes) if step_held else (prompt_bytes, held_bytes)
            if longer[: len(shorter)] != shorter:
                break
            if (step_held and i == len(held)) or (step_prompt and k == len(prompt)):
                break
        if step_held:
            piece = token_bytes(held[i])
            if not piece:
                break
            held_bytes += piece
            i += 1
        if step_prompt:
            piece = token_bytes(prompt[k])
            if not piece:
                break
            prompt_bytes += piece
            k += 1
    if best is None or best[1] >= len(prompt):
        return None
    j, k = best
    return list(held[:j]) + list(prompt[k:])
