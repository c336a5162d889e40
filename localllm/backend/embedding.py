"""Sentence embeddings: what an embedding context offers, and how a loaded backend gets one.

An `Embedder` is the model loaded a second time for embeddings (sharing its weights where
the library allows): its own context, separate from the generation engine's, so one
server computes embeddings while a chat streams. It pools each input's hidden states the
way the model's metadata says (`{arch}.pooling_type`: mean, CLS or last token); a model
without a pooling type (a plain chat model) gives no sentence embeddings and is refused.

Backends are imported lazily, from the table below, only when embeddings are asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from localllm.errors import UserError

if TYPE_CHECKING:  # numpy stays out of the server's start-up imports
    import numpy as np

# GGUF `{arch}.pooling_type` values (llama.cpp's enum llama_pooling_type).
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
SENTENCE_POOLINGS = frozenset({"mean", "cls", "last"})


class EmbeddingsUnsupported(UserError):
    """The model cannot give sentence embeddings (no pooling type, or a backend without them)."""


class Embedder(Protocol):
    dimensions: int  # length of each vector
    max_tokens: int  # most tokens one input may have
    max_batch_tokens: int  # most tokens one `embed` call may take, all inputs together
    max_batch_inputs: int  # most inputs one `embed` call may take
    pooling: str  # "mean", "cls" or "last"

    def tokenize(self, text: str) -> list[int]:
        """Text to ids, with the markers the model's embeddings expect (BOS, or BERT's
        [CLS] ... [SEP]); special-token text in `text` stays plain text."""

    def embed(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled vectors, shape [len(inputs), dimensions], float32, not normalised.
        The inputs must fit one batch (see the limits above)."""

    def close(self) -> None: ...


def pooling_of(metadata: dict, architecture: str) -> str:
    """The pooling a GGUF model declares ("none" when it declares none)."""
    value = metadata.get(f"{architecture}.pooling_type")
    return POOLING_NAMES.get(value, "none") if isinstance(value, int) else "none"


def refuse_without_pooling(name: str, pooling: str, architecture: str) -> None:
    if pooling not in SENTENCE_POOLINGS:
        why = (f"declares no pooling type ({architecture}.pooling_type)" if pooling == "none"
               else f"declares '{pooling}' pooling, which gives no sentence vectors")
        raise EmbeddingsUnsupported(
            f"model '{name}' {why}, so it cannot give embeddings: use an embedding model "
            "(nomic-embed-text, bge, all-MiniLM, ... as GGUF) whose metadata sets a mean, CLS or last-token pooling")


def _llamacpp(backend, *, threads: int, ctx_size: int) -> Embedder:
    from localllm.cpu_backend.embeddings import LlamaCppEmbedder

    return LlamaCppEmbedder(backend, threads=threads, ctx_size=ctx_size)


# Backend name -> opener(backend, threads=, ctx_size=). A backend missing here has no
# embeddings yet.
OPENERS = {"llamacpp": _llamacpp}


def open_embedder(backend, name: str, *, threads: int, ctx_size: int) -> Embedder:
    """An embedding context for the loaded `backend` (model called `name` in messages)."""
    info = backend.info
    refuse_without_pooling(name, pooling_of(info.metadata, info.architecture), info.architecture)
    opener = OPENERS.get(backend.name)
    if opener is None:
        raise EmbeddingsUnsupported(f"the {backend.name} backend has no embeddings yet: use --backend llamacpp")
    return opener(backend, threads=threads, ctx_size=ctx_size)
