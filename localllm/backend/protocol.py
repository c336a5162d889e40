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


@dataclass(frozen=True)
class CacheCapability:
    """How far one cache can be cut back by `Backend.trim`, as it stands now.

    `trimmable`: whether this kind of cache can ever be cut back to a shorter non-empty
    prefix (False for recurrent state). `min_tokens`: the fewest tokens, other than 0,
    that `trim` accepts now: 0 for a full-attention cache; for a cache with
    sliding-window layers of window W (a position attends to itself and the W-1 before
    it) whose oldest key still held there is at position m > 0, m + W - 1 (resuming at
    position n needs the keys of n-W+1 .. n-1); `len(cache.tokens)` when `trimmable` is
    False. `restored_min_tokens`: the same for a cache that `load_state` fills from
    `save_state(cache)` now, which may hold less than the live cache (llama.cpp saves only
    the last window of sliding-window layers). The KV-cache manager reuses a prefix of n
    tokens only when the cache (or saved state) allows n; below that it prefills.
    """

    trimmable: bool
    min_tokens: int = 0
    restored_min_tokens: int = 0

    def allows(self, n_tokens: int) -> bool:
        """Whether `trim(cache, n_tokens)` is allowed (0, and n >= min_tokens, always are)."""
        return n_tokens == 0 or n_tokens >= self.min_tokens


def window_min_tokens(oldest_held: int, window: int) -> int:
    """`CacheCapability.min_tokens` of a sliding-window layer whose oldest key held is at
    position `oldest_held` (window W: a position attends to itself and the W-1 before)."""
    return 0 if oldest_held <= 0 else oldest_held + window - 1


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
        """Cut `cache` back to its first `n_tokens` tokens; raises ValueError (cache
        unchanged) when `cache_capability(cache)` does not allow `n_tokens`."""

    def cache_capability(self, cache: Cache) -> CacheCapability:
        """How far `cache` (and a reload of its saved state) can be trimmed now."""

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
