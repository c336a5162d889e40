"""A Hugging Face `tokenizer.json` as a `Tokenizer`, through the `tokenizers` library.

Control tokens are the added tokens marked `special`. `encode(special=False)` uses a
second copy of the tokenizer with `encode_special_tokens` on, so "<|im_end|>" typed by a
user is split like any other text (two copies rather than flipping a flag on one keeps
encoding safe from several threads). BOS, EOS and `add_bos_token` come from the
`tokenizer_config.json` beside the file when there is one.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

from localllm.errors import ModelFileError
from localllm.tokenizer.base import TokenizerBase

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: each printable stand-in char to its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _token_content(value) -> str | None:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _mentions_byte_level(spec) -> bool:
    if isinstance(spec, dict):
        return spec.get("type") == "ByteLevel" or any(_mentions_byte_level(v) for v in spec.values())
    if isinstance(spec, list):
        return any(_mentions_byte_level(v) for v in spec)
    return False


class HFTokenizer(TokenizerBase):
    """One `tokenizer.json` (plus its optional `tokenizer_config.json` settings)."""

    def __init__(self, path: str | Path, *, config: dict | None = None, chat_template: str | None = None):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
            spec = json.loads(text)
            self._tok = Tokenizer.from_str(text)
            self._plain = Tokenizer.from_str(text)
        except Exception as e:  # OSError, bad JSON, or the plain Exception tokenizers raises
            raise ModelFileError(f"{self.path}: not a usable tokenizer.json ({e}): give the model's own tokenizer.json") from None
        self._plain.encode_special_tokens = True
        config = config or {}
        self.chat_template = chat_template
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        added = self._tok.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        self._added_text = {i: t.content for i, t in added.items()}
        self._byte_level = _mentions_byte_level(spec.get("decoder")) or _mentions_byte_level(spec.get("pre_tokenizer"))
        self._bytes_of_char = _byte_decoder() if self._byte_level else {}

        self.bos_id = self._find(config.get("bos_token"), _BOS_NAMES)
        self.eos_id = self._find(config.get("eos_token"), _EOS_NAMES)
        self.add_bos = self._decide_add_bos(config.get("add_bos_token"))

    def _find(self, configured, fallback_names: Sequence[str]) -> int | None:
        name = _token_content(configured)
        if name is not None:
            return self._tok.token_to_id(name)
        for name in fallback_names:
            token = self._tok.token_to_id(name)
            if token is not None and token in self._special_ids:
                return token
        return None

    def _decide_add_bos(self, configured) -> bool:
        if isinstance(configured, bool):
            return configured and self.bos_id is not None
        # No word from the config: does the tokenizer's own post-processor add one?
        with_special = self._tok.encode("a", add_special_tokens=True).ids
        without = self._tok.encode("a", add_special_tokens=False).ids
        if len(with_special) > len(without) and with_special[0] != (without[0] if without else None):
            if self.bos_id is None:
                self.bos_id = with_special[0]
            return with_special[0] == self.bos_id
        return False

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        tok = self._tok if special else self._plain
        ids = tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.add_bos:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        return self._tok.decode([int(t) for t in ids], skip_special_tokens=not special)

    def token_bytes(self, token: int) -> bytes:
        if token in self._special_ids:
            return b""
        if token in self._added_text:  # added tokens are stored as plain text
            return self._added_text[token].encode("utf-8")
        piece = self._tok.id_to_token(token)
        if piece is None:
            return b""
        if self._byte_level:
            return bytes(self._bytes_of_char.get(c, 0x3F) for c in piece)
        match = _BYTE_PIECE.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def token_text(self, token: int) -> str:
        return self._tok.id_to_token(token) or ""

    def is_control(self, token: int) -> bool:
        return token in self._special_ids

    @cached_property
    def special_tokens(self) -> Mapping[str, int]:
        return {self._added_text[i]: i for i in self._special_ids}
