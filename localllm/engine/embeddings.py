"""Embedding requests: texts or token ids in, one vector each out.

An `EmbeddingRunner` owns a model's `Embedder` (its embedding context, separate from the
generation engine) and runs one request at a time on it, from whatever thread calls it:
inputs are tokenized, checked against the context (cut to fit, or refused with the
numbers), packed into as few batches as the context allows, and the pooled vectors come
back L2-normalised or raw, as the caller asks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from localllm.backend.embedding import Embedder
from localllm.errors import ContextOverflowError, UserError

EmbeddingInput = Union[str, Sequence[int]]


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # [n_inputs, dimensions], float32
    prompt_tokens: int  # tokens embedded, after any truncation
    truncated: int  # how many inputs were cut to fit


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit L2 norm (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


class EmbeddingRunner:
    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self.embedder.dimensions

    def tokens(self, inputs: Sequence[EmbeddingInput], *, truncate: bool) -> tuple[list[list[int]], int]:
        """Each input as token ids that fit the context, and how many were cut."""
        limit = self.embedder.max_tokens
        out, cut = [], 0
        for i, item in enumerate(inputs):
            tokens = self.embedder.tokenize(item) if isinstance(item, str) else list(item)
            if not tokens:
                raise UserError(f"input {i} is empty: there is nothing to embed")
            if len(tokens) > limit:
                if not truncate:
                    raise ContextOverflowError(len(tokens), limit, 0, f"input {i} is too long for the "
                                               "embedding context: shorten it, or let it be truncated")
                tokens = tokens[:limit]
                cut += 1
            out.append(tokens)
        return out, cut

    def embed(self, inputs: Sequence[EmbeddingInput], *, truncate: bool = True,
              normalize: bool = True) -> EmbeddingResult:
        token_lists, cut = self.tokens(inputs, truncate=truncate)
        e = self.embedder
        vectors = np.empty((len(token_lists), e.dimensions), dtype=np.float32)
        with self._lock:
            start = 0
            while start < len(token_lists):
                end, used = start, 0
                while (end < len(token_lists) and end - start < e.max_batch_inputs
                       and used + len(token_lists[end]) <= e.max_batch_tokens):
                    used += len(token_lists[end])
                    end += 1
                vectors[start:end] = e.embed(token_lists[start:end])
                start = end
        if normalize:
            vectors = normalized(vectors)
        return EmbeddingResult(vectors, sum(len(t) for t in token_lists), cut)

    def close(self) -> None:
        with self._lock:
            self.embedder.close()
