"""Tokenizer layer: one protocol (`Tokenizer`) over GGUF vocabularies (llama.cpp),
SentencePiece and Hugging Face tokenizers, `load_tokenizer(path)` to pick one, and chat
templates (`templates.py`, rendered into tokens by `chat.ChatPrompter`).

Nothing here imports a backend library at module level.
"""

from localllm.tokenizer.loader import load_tokenizer
from localllm.tokenizer.protocol import END_OF_TURN_TEXTS, Tokenizer

__all__ = ["END_OF_TURN_TEXTS", "Tokenizer", "load_tokenizer"]
