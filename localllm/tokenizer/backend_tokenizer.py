"""A loaded backend seen as a `Tokenizer`, so chat templates use the very tokenizer
that feeds the model (no second copy of the vocabulary in memory).

Works on the backend protocol only (`tokenize`, `token_bytes`, `bos_id`, `eos_ids`,
`add_bos`, `info`), plus `token_text` and `is_control` where the backend has them.
"""

from __future__ import annotations

from functools import cached_property
from typing import Mapping

from localllm.tokenizer.base import TokenizerBase, end_of_turn_ids_from
from localllm.tokenizer.protocol import END_OF_TURN_TEXTS, Tokenizer


class BackendTokenizer(TokenizerBase):
    """Adapter from `localllm.backend.protocol.Backend` to `Tokenizer`."""

    def __init__(self, backend):
        self.backend = backend
        info = getattr(backend, "info", None)
        self.metadata: dict = dict(getattr(info, "metadata", {}) or {})
        self.chat_template = getattr(info, "chat_template", None)
        self.vocab_size = int(backend.vocab_size)
        self.bos_id = backend.bos_id
        self.add_bos = bool(getattr(backend, "add_bos", backend.bos_id is not None)) and backend.bos_id is not None
        self.adds_space_prefix = bool(getattr(backend, "adds_space_prefix", False))
        self._eos_ids = frozenset(getattr(backend, "eos_ids", ()))
        self.eos_id = self._pick_eos()

    def _pick_eos(self) -> int | None:
        declared = self.metadata.get("tokenizer.ggml.eos_token_id")
        if isinstance(declared, int) and 0 <= declared < self.vocab_size:
            return declared
        return min(self._eos_ids) if self._eos_ids else None

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return list(self.backend.tokenize(text, add_bos=add_bos, special=special))

    def token_bytes(self, token: int) -> bytes:
        return self.backend.token_bytes(token)

    def token_text(self, token: int) -> str:
        text_of = getattr(self.backend, "token_text", None)
        if text_of is not None:
            return text_of(token)
        return self.backend.token_bytes(token).decode("utf-8", errors="replace")

    def is_control(self, token: int) -> bool:
        is_control = getattr(self.backend, "is_control", None)
        return bool(is_control(token)) if is_control is not None else False

    @cached_property
    def special_tokens(self) -> Mapping[str, int]:
        # One pass over the vocabulary (a fraction of a second for 150k tokens); only
        # asked for by callers that need every control token.
        return {self.token_text(t): t for t in range(self.vocab_size) if self.is_control(t)}

    @cached_property
    def end_of_turn_ids(self) -> frozenset[int]:
        # The backend's end-of-generation set, plus the known end-of-turn texts looked
        # up one by one (cheaper than scanning the whole vocabulary).
        found = {}
        for text in END_OF_TURN_TEXTS:
            token = single_control_token(self, text)
            if token is not None:
                found[text] = token
        return end_of_turn_ids_from(found, [*self._eos_ids, self.eos_id])


def single_control_token(tokenizer: Tokenizer, text: str) -> int | None:
    """The id of the control token spelled `text`, or None when the vocabulary has none."""
    ids = tokenizer.encode(text, add_bos=False, special=True)
    if len(ids) == 1 and tokenizer.is_control(ids[0]):
        return ids[0]
    return None


def as_tokenizer(obj) -> Tokenizer:
    """`obj` itself if it already speaks the `Tokenizer` protocol, else (a backend) wrapped."""
    if hasattr(obj, "encode") and hasattr(obj, "end_of_turn_ids"):
        return obj
    if hasattr(obj, "tokenize"):
        return BackendTokenizer(obj)
    raise TypeError(f"{type(obj).__name__} is neither a Tokenizer nor a backend")

