"""A SentencePiece `tokenizer.model` as a `Tokenizer` (Llama 2, Mistral v0.1-0.3,
Gemma, llama2.c's tok512, ...).

SentencePiece itself never turns text into control tokens, which is what `special=False`
needs. For `special=True` the text is cut at control-token texts first and each plain
fragment is encoded on its own, as llama.cpp does for SentencePiece vocabularies.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

from localllm.errors import ModelFileError
from localllm.tokenizer.base import TokenizerBase, split_on_special

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class SentencePieceTokenizer(TokenizerBase):
    """Wraps `sentencepiece.SentencePieceProcessor` over one model file.

    `add_bos` defaults to True when the model has a BOS piece (the Llama convention);
    a `tokenizer_config.json` next to the file can say otherwise (see `load_tokenizer`).
    """

    def __init__(self, path: str | Path, *, add_bos: bool | None = None, chat_template: str | None = None):
        import sentencepiece

        self.path = Path(path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise ModelFileError(f"{self.path}: not a SentencePiece model ({e}): give a tokenizer.model file") from None
        sp = self._sp
        self.vocab_size = sp.GetPieceSize()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id() if sp.eos_id() >= 0 else None
        self.add_bos = (self.bos_id is not None) if add_bos is None else (add_bos and self.bos_id is not None)
        self.chat_template = chat_template
        self.adds_space_prefix = _adds_dummy_prefix(sp)

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        ids: list[int] = [self.bos_id] if add_bos and self.add_bos else []
        if not special:
            ids += self._sp.EncodeAsIds(text)
            return ids
        for part in split_on_special(text, self.special_tokens):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids += self._sp.EncodeAsIds(part)
        return ids

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        if special:
            return super().decode(ids, special=True)
        return self._sp.DecodeIds([int(t) for t in ids])

    def token_bytes(self, token: int) -> bytes:
        sp = self._sp
        if sp.IsControl(token) or sp.IsUnknown(token):
            return b""
        piece = sp.IdToPiece(token)
        if sp.IsByte(token):
            match = _BYTE_PIECE.fullmatch(piece)
            if match:
                return bytes([int(match.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def token_text(self, token: int) -> str:
        return self._sp.IdToPiece(token)

    def is_control(self, token: int) -> bool:
        return bool(self._sp.IsControl(token))

    @cached_property
    def special_tokens(self) -> Mapping[str, int]:
        sp = self._sp
        return {sp.IdToPiece(t): t for t in range(self.vocab_size) if sp.IsControl(t)}


def _adds_dummy_prefix(sp) -> bool:
    """Whether the model puts a space before the first word (normalizer_spec)."""
    try:
        from sentencepiece import sentencepiece_model_pb2 as model_pb2

        proto = model_pb2.ModelProto()
        proto.ParseFromString(sp.serialized_model_proto())
        return bool(proto.normalizer_spec.add_dummy_prefix)
    except Exception:
        # Without protobuf: encode a word and look for the word-start mark.
        pieces = sp.EncodeAsPieces("a")
        return bool(pieces) and pieces[0].startswith("\u2581")
