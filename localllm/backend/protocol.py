"""The backend protocol: what the engine, the KV-cache manager and speculative decoding
may ask of a loaded model, whatever library computes it.

A backend works on token ids and numpy logits only. A `Cache` holds the keys and values
of the tokens fed to it so far (`cache.tokens`); `forward` appends to it, `trim` cuts it
back. Backends are loaded through `localllm.backend.select.load_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from localllm.types import ModelInfo  # noqa: F401  (re-exported: part of the protocol)

import numpy as np


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a loaded model, split by what holds them."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes


class Cache(Protocol):
    """Keys and values for `tokens`, in order; owned by the backend that made it."""

    @property
    def tokens(self) -> list[int]: ...

    def close(self) -> None:
        """Release the memory this cache holds; the cache is unusable afterwards."""


class Backend(Protocol):
    name: str
    info: ModelInfo
    n_ctx: int
    vocab_size: int
    bos_id: int | None
    eos_ids: frozenset[int]
    add_bos: bool
    adds_space_prefix: bool

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Text to ids. With `special=False`, text such as "<|eot_id|>" stays plain text."""

    def token_bytes(self, token: int) -> bytes:
        """The raw bytes of one token's piece (a byte-fallback token is one byte);
        control tokens give b""."""

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def new_cache(self) -> Cache: ...

    def forward(self, tokens: Sequence[int], cache: Cache, all_logits: bool = False) -> np.ndarray:
        """Feed `tokens` after `cache.tokens`; return the logits of the last position
        (shape [vocab]) or of every fed position (shape [len(tokens), vocab]).
        The returned array may be a view the next call overwrites: copy to keep it."""

    def trim(self, cache: Cache, n_tokens: int) -> None:
        """Cut `cache` back to its first `n_tokens` tokens."""

    def copy_prefix(self, src: Cache, dst: Cache, n_tokens: int) -> None:
        """Make `dst` hold the first `n_tokens` of `src` (dst must be empty)."""

    def save_state(self, cache: Cache) -> bytes:
        """The cache's keys and values, for a snapshot on disk."""

    def load_state(self, cache: Cache, tokens: Sequence[int], data: bytes) -> bool:
        """Fill an empty cache with `tokens` from `save_state` bytes; False if refused."""

    @property
    def kv_bytes_per_token(self) -> int: ...

    def memory(self) -> MemoryReport: ...

    def close(self) -> None: ...
