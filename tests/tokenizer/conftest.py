"""Fixtures for the tokenizer tests: the real Llama 2 vocabulary as a GGUF (through
llama.cpp) and as a SentencePiece model, and small real Hugging Face tokenizer folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_model
from tests.tokenizer.tokenizer_fixtures import template_text, train_byte_level_bpe


@pytest.fixture(scope="session")
def llama_gguf_vocab():
    from localllm.cpu_backend.vocab import LlamaCppVocabulary

    tok = LlamaCppVocabulary.from_file(require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf"))
    yield tok
    tok.close()


@pytest.fixture(scope="session")
def llama_sentencepiece():
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(require_model("llama2-tokenizer/tokenizer.model"))


@pytest.fixture(scope="session")
def chatml_folder(tmp_path_factory) -> Path:
    """A Qwen2.5-like folder: ChatML special tokens, no BOS, the real Qwen2.5 template."""
    return train_byte_level_bpe(
        tmp_path_factory.mktemp("chatml"),
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
         "chat_template": template_text("qwen2.5-instruct.jinja")},
    )


@pytest.fixture(scope="session")
def llama3_folder(tmp_path_factory) -> Path:
    """A Llama-3-like folder: BOS added by the post-processor, header and turn tokens,
    the real Llama 3.2 template (which writes {{ bos_token }} itself)."""
    return train_byte_level_bpe(
        tmp_path_factory.mktemp("llama3"),
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
         "chat_template": template_text("llama-3.2-instruct.jinja")},
        bos_template="<|begin_of_text|>",
    )
