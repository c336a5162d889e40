"""`load_tokenizer(path)`: pick the `Tokenizer` implementation by what the file is.

- a `.gguf` file: its vocabulary through llama.cpp, loaded vocab-only (asked of the
  backend table, `localllm.backend.select.load_gguf_vocabulary`: this layer imports no
  backend folder);
- a `tokenizer.json` (or any `.json`): Hugging Face `tokenizers`;
- a `.model` file: SentencePiece;
- a folder: its `tokenizer.json`, else its `tokenizer.model`, with the folder's
  `tokenizer_config.json` (BOS/EOS, add_bos_token) and chat template.

Libraries are imported only for the kind asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

from localllm.errors import ModelFileError
from localllm.tokenizer.protocol import Tokenizer
from localllm.tokenizer.templates import find_chat_template


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file: give a .gguf, tokenizer.json or tokenizer.model file, or a model folder")
    folder = path.parent
    if path.suffix == ".gguf":
        from localllm.backend.select import load_gguf_vocabulary

        return load_gguf_vocabulary(path)
    if path.suffix == ".json":
        return _hf(path, folder)
    if path.suffix == ".model":
        return _sentencepiece(path, folder)
    raise ModelFileError(
        f"{path}: unknown tokenizer file kind: give a .gguf, tokenizer.json or tokenizer.model file, or a model folder"
    )


def _load_folder(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return _hf(folder / "tokenizer.json", folder)
    if (folder / "tokenizer.model").is_file():
        return _sentencepiece(folder / "tokenizer.model", folder)
    raise ModelFileError(f"{folder}: no tokenizer.json or tokenizer.model in this folder: is it a model folder?")


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _hf(path: Path, folder: Path) -> Tokenizer:
    from localllm.tokenizer.hf_tokenizer import HFTokenizer

    return HFTokenizer(path, config=_config(folder), chat_template=find_chat_template(folder))


def _sentencepiece(path: Path, folder: Path) -> Tokenizer:
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

    add_bos = _config(folder).get("add_bos_token")
    return SentencePieceTokenizer(
        path, add_bos=add_bos if isinstance(add_bos, bool) else None, chat_template=find_chat_template(folder)
    )
