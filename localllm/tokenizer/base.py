"""What the tokenizer implementations share: decoding from token pieces, the end-of-turn
set, and splitting text at control-token texts (for vocabularies whose library cannot).
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterable, Mapping, Sequence

from localllm.tokenizer.protocol import END_OF_TURN_TEXTS


class TokenizerBase:
    """Mixin for `Tokenizer` implementations. Subclasses provide `token_bytes`,
    `token_text`, `is_control`, `special_tokens`, `eos_id` and `adds_space_prefix`."""

    adds_space_prefix: bool = False
    chat_template: str | None = None
    eos_id: int | None = None

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        parts: list[bytes] = []
        strip_space = self.adds_space_prefix
        for token in ids:
            if self.is_control(token):
                if special:
                    parts.append(self.token_text(token).encode("utf-8"))
                continue
            piece = self.token_bytes(token)
            if strip_space and piece:
                # SentencePiece marks the first word with a space of its own making.
                strip_space = False
                if piece.startswith(b" "):
                    piece = piece[1:]
            parts.append(piece)
        return b"".join(parts).decode("utf-8", errors="replace")

    @cached_property
    def end_of_turn_ids(self) -> frozenset[int]:
        return end_of_turn_ids_from(self.special_tokens, [self.eos_id])


def end_of_turn_ids_from(special_tokens: Mapping[str, int], always: Iterable[int | None]) -> frozenset[int]:
    """`always` (the EOS ids) plus the control tokens whose text is a known end of turn."""
    ids = {t for t in always if t is not None}
    ids.update(special_tokens[text] for text in END_OF_TURN_TEXTS if text in special_tokens)
    return frozenset(ids)


def split_on_special(text: str, special_tokens: Mapping[str, int]) -> list[str | int]:
    """Cut `text` at every occurrence of a control token's text: plain text stays a
    string, a control token becomes its id. At one position the longest text wins."""
    if not text or not special_tokens:
        return [text] if text else []
    by_first: dict[str, list[str]] = {}
    for s in sorted(special_tokens, key=len, reverse=True):
        if s:
            by_first.setdefault(s[0], []).append(s)
    parts: list[str | int] = []
    plain_start = i = 0
    while i < len(text):
        match = next((s for s in by_first.get(text[i], ()) if text.startswith(s, i)), None)
        if match is None:
            i += 1
            continue
        if plain_start < i:
            parts.append(text[plain_start:i])
        parts.append(special_tokens[match])
        i = plain_start = i + len(match)
    if plain_start < len(text):
        parts.append(text[plain_start:])
    return parts
