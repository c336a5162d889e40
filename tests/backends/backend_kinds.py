"""Every backend the conformance suite runs, one entry each: how to load stories260K on
it and which vocabulary it hands out for the Llama 2 vocabulary. A new backend joins the
suite (`test_conformance.py`) by adding one `BackendKind` to `BACKEND_KINDS`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from localllm.backend.protocol import Backend
from localllm.tokenizer.protocol import Tokenizer

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "backends"))
from conftest import require_model  # noqa: E402


@dataclass(frozen=True)
class BackendKind:
    name: str
    # stories260K (an F32 GGUF) loaded with a context of `ctx` tokens
    load_stories: Callable[[int], Backend]
    # the vocabulary this backend hands out for a model with the Llama 2 vocabulary
    llama2_vocabulary: Callable[[], Tokenizer]
    # one line saying why it cannot run on this machine, or None
    unavailable: Callable[[], str | None] = lambda: None
    # logits computed two ways (batched vs one by one, trimmed vs fresh) agree this closely
    atol: float = 1e-4


def _settings(ctx: int, backend: str, parallel: int):
    from localllm.config import Settings

    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend=backend,
                    ctx_size=ctx, ctx_size_asked=True, threads=1, parallel=parallel)


def _table_backend(name: str, parallel: int = 1) -> Callable[[int], Backend]:
    def load(ctx: int) -> Backend:
        from localllm.backend.select import load_backend

        return load_backend(str(require_model("stories260K/stories260K.gguf")), _settings(ctx, name, parallel))

    return load


def _table_unavailable(name: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        from localllm.backend.select import BACKENDS

        return BACKENDS[name].unavailable_reason() if name in BACKENDS else f"no {name} row in the backend table"

    return reason


def _gguf_vocabulary() -> Tokenizer:
    """What a backend that reads GGUF vocabularies through the tokenizer layer hands out."""
    from localllm.tokenizer import load_tokenizer

    return load_tokenizer(require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf"))


def _numpy_stories(ctx: int) -> Backend:
    from reference_numpy import NumpyReferenceBackend
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

    vocabulary = SentencePieceTokenizer(require_model("stories260K/tok512.model"))
    return NumpyReferenceBackend(require_model("stories260K/stories260K.gguf"), vocabulary, ctx_size=ctx)


def _numpy_llama2_vocabulary() -> Tokenizer:
    from localllm.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(require_model("llama2-tokenizer/tokenizer.model"))


BACKEND_KINDS = [
    # llama.cpp keeps keys and values in f16: logits computed two ways differ a little more.
    BackendKind("llamacpp", _table_backend("llamacpp"), _gguf_vocabulary, _table_unavailable("llamacpp"), atol=1e-2),
    # --parallel 4: a KV stream per sequence, at most 4 caches at once (the tests use fewer).
    BackendKind("llamacpp-streams", _table_backend("llamacpp", parallel=4), _gguf_vocabulary,
                _table_unavailable("llamacpp"), atol=1e-2),
    BackendKind("mlx", _table_backend("mlx"), _gguf_vocabulary, _table_unavailable("mlx"), atol=1e-3),
    BackendKind("numpy", _numpy_stories, _numpy_llama2_vocabulary),
]
