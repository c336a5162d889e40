"""llama.cpp's vocabulary as a `Tokenizer`: the one class for every llama.cpp vocabulary.

A loaded `LlamaCppBackend` hands out one over its own model (`backend.vocabulary`), so
the ids are exactly those the model is fed. `LlamaCppVocabulary.from_file` loads a GGUF
file vocab-only (no weights are read: cheap even for a large model) for the tokenizer
layer's `load_tokenizer`. Metadata (chat template, space prefix) comes from the GGUF header.
Every method may be called from any thread.
"""

from __future__ import annotations

import ctypes
import threading
from functools import cached_property
from pathlib import Path
from typing import Mapping

import llama_cpp

from . import llama_log
from localllm.errors import ModelFileError
from localllm.formats.gguf import read_header
from localllm.formats.gguf_checks import check_header_values
from localllm.tokenizer.base import TokenizerBase, end_of_turn_ids_from


class LlamaCppVocabulary(TokenizerBase):
    """llama.cpp's tokenizer for the vocabulary of one loaded `llama_model`."""

    def __init__(self, model, metadata: Mapping, *, owns_model: bool = False):
        self._model = model
        self._owns_model = owns_model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._lock = threading.Lock()  # the piece buffer is shared
        template = metadata.get("tokenizer.chat_template")
        self.chat_template = template if isinstance(template, str) else None
        self.metadata = {k: v for k, v in metadata.items() if not k.startswith("_")}

        self.vocab_size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        eos = llama_cpp.llama_vocab_eos(self._vocab)
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab)) and self.bos_id is not None
        kind = metadata.get("tokenizer.ggml.model")
        self.adds_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", kind == "llama"))
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

    @classmethod
    def from_file(cls, path: str | Path) -> "LlamaCppVocabulary":
        """The vocabulary of a GGUF file, loaded without its weights."""
        path = Path(path)
        meta, _ = read_header(path)  # a clear error for a missing or foreign file
        arch = meta.get("general.architecture")
        check_header_values(path, meta, arch if isinstance(arch, str) else "")  # what llama.cpp asserts on
        log = llama_log.install(False)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            detail = log.last_error() or "llama.cpp could not read it"
            raise ModelFileError(f"{path}: cannot load the vocabulary ({detail}): the file may be corrupted or too new")
        return cls(model, meta, owns_model=True)

    # -- text <-> ids ------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        vocab = self._live_vocab()
        data = text.encode("utf-8")
        with_bos = add_bos and self.add_bos
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, with_bos, special)
        if n < 0:  # the buffer was too small: llama.cpp says how many ids it needs
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, with_bos, special)
        return list(buf[:n])

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            with self._lock:
                n = llama_cpp.llama_token_to_piece(self._live_vocab(), token, self._piece_buf, 256, 0, False)
                piece = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> str:
        return (llama_cpp.llama_vocab_get_text(self._live_vocab(), token) or b"").decode("utf-8", errors="replace")

    def is_control(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_control(self._live_vocab(), token))

    # -- special tokens ----------------------------------------------------------------

    @cached_property
    def _non_text_ids(self) -> tuple[list[int], list[int]]:
        """(control token ids, ids of every token that is not a plain text piece), from
        one pass over the token attributes."""
        get_attr, vocab = llama_cpp.llama_vocab_get_attr, self._live_vocab()
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        plain = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL | llama_cpp.LLAMA_TOKEN_ATTR_BYTE
        attrs = [(t, get_attr(vocab, t)) for t in range(self.vocab_size)]
        return [t for t, a in attrs if a & control], [t for t, a in attrs if not a & plain]

    @cached_property
    def special_tokens(self) -> Mapping[str, int]:
        return {self.token_text(t): t for t in self._non_text_ids[0]}

    @cached_property
    def end_of_turn_ids(self) -> frozenset[int]:
        # llama.cpp's end-of-generation set holds the family's end-of-turn tokens; only
        # tokens that are not plain text pieces can be in it.
        vocab, is_eog = self._live_vocab(), llama_cpp.llama_vocab_is_eog
        eog = [t for t in self._non_text_ids[1] if is_eog(vocab, t)]
        eot = llama_cpp.llama_vocab_eot(vocab)
        return end_of_turn_ids_from(self.special_tokens, [self.eos_id, eot if eot >= 0 else None, *eog])

    # -- lifetime ----------------------------------------------------------------------

    def _live_vocab(self):
        if self._model is None:
            raise RuntimeError("this vocabulary's model was unloaded")
        return self._vocab

    def close(self) -> None:
        """Frees the model when this vocabulary loaded it; either way it is unusable after."""
        if self._model is not None:
            if self._owns_model:
                llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
