"""Data and builders shared by the tokenizer tests: the real chat templates kept in
templates/, a fixed clock for templates that print the date, and small real Hugging Face
tokenizers trained here with the `tokenizers` library.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Llama 3.x templates print today's date; tests render on a fixed day.
FIXED_DAY = datetime.datetime(2024, 9, 3, 12, 0, 0)

CORPUS = [
    "Hello there! How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little girl who liked to play in the park.",
    "def add(a, b):\n    return a + b\n",
    "Numbers 12345 and symbols <|> [ ] { } | < > / are common in code.",
    "Ünïcödé, 日本語, emoji 🦙 and tabs\tand new\nlines.",
] * 4


def template_text(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def fixed_clock() -> datetime.datetime:
    return FIXED_DAY


def train_byte_level_bpe(folder: Path, special: list[str], config: dict, bos_template: str | None = None) -> Path:
    """A small real byte-level BPE tokenizer.json (as GPT-2, Llama 3, Qwen use), trained
    on CORPUS, with `special` as special added tokens and `config` as tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_template} $A", special_tokens=[(bos_template, tok.token_to_id(bos_template))]
        )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
