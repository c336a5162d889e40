"""Tokenizer layer: one protocol over GGUF vocabularies, SentencePiece and HF tokenizers,
plus chat templates (see `chat.py`)."""
