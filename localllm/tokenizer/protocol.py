"""The tokenizer protocol: what chat templates, the engine and the server may ask of a
model's vocabulary, whichever file it came from.

Implementations: `LlamaCppVocabulary` (llama.cpp's own tokenizer, over a loaded model or a
GGUF file read vocab-only: `localllm.cpu_backend.vocab`), `SentencePieceTokenizer` (a
`tokenizer.model`) and `HFTokenizer` (a Hugging Face `tokenizer.json`). A loaded backend
hands out its model's vocabulary as `backend.vocabulary`; `localllm.tokenizer.load_tokenizer`
picks one by file kind.

Two rules every implementation keeps:
- `encode(text, special=False)` never yields a control token: text a user typed, such as
  "<|im_end|>", stays plain text pieces. Only `special=True` (for a chat template's own
  markup) turns such text into control tokens.
- `add_bos=True` means "start a sequence the way this model expects": BOS is prepended
  only when the vocabulary says the model uses one (`add_bos`).
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, runtime_checkable

# Texts of tokens that end a chat turn in the families we know: Llama 3 (<|eot_id|>,
# <|eom_id|>), ChatML/Qwen (<|im_end|>), Gemma (<end_of_turn>), Phi-3 (<|end|>),
# GPT-style (<|endoftext|>), Llama 3 base (<|end_of_text|>), CodeLlama/others (<EOT>).
# A vocabulary's own end-of-sequence token always ends a turn too.
END_OF_TURN_TEXTS: tuple[str, ...] = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
)


@runtime_checkable
class Tokenizer(Protocol):
    """Text to token ids and back, for one vocabulary."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    # Whether a sequence of this model starts with BOS (the vocabulary's add_bos flag).
    add_bos: bool
    # Tokens that end an assistant turn: EOS plus the family's end-of-turn tokens.
    end_of_turn_ids: frozenset[int]
    # The chat template that came with the tokenizer files (None when they have none).
    chat_template: str | None
    # SentencePiece style: the first word of a text gets a space of the tokenizer's own
    # making, which decoding (and a stream starting right after BOS) leaves out.
    adds_space_prefix: bool

    def encode(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to ids. With `special=False`, text such as "<|im_end|>" stays plain text."""

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """Ids to text. Control tokens are left out unless `special`; the space a
        SentencePiece vocabulary puts before the first word is removed."""

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token's piece (a byte-fallback token is one byte);
        control tokens give b""."""

    def token_text(self, token: int) -> str:
        """The vocabulary's own text for a token, control tokens included ("<|im_end|>")."""

    def is_control(self, token: int) -> bool:
        """True for control tokens: the ones only `encode(..., special=True)` produces."""

    @property
    def special_tokens(self) -> Mapping[str, int]:
        """Every control token, by its text."""


def token_text_or_empty(tokenizer: Tokenizer, token: int | None) -> str:
    """The text of `token`, or "" when there is none (a vocabulary without BOS, say)."""
    return tokenizer.token_text(token) if token is not None else ""
