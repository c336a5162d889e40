"""The backend protocol: what the engine, the KV-cache manager and speculative decoding may
ask of a loaded model, whatever library computes it. Compute only: the vocabulary is a
separate object (`Backend.vocabulary`, the tokenizer layer's `Tokenizer` protocol).

A backend folder (`cpu_backend/`, `models/`) provides two things:
- a `BackendLoader`: one row of the backend table in `localllm.backend.select`. It says
  whether the backend can run here, reads a model file's header into a `ModelInfo`
  (refusing files it cannot run with a `ModelFileError`), estimates the memory a load
  needs (for the preflight) and loads the model. Importing the module that defines the
  loader must not import the backend's library (MLX, llama_cpp): do that inside `load`.
- the loaded `Backend` below, with the `Cache` and `Logits` objects it hands out.

Rules every backend keeps (the conformance suite in `tests/backends/` checks them):

Threading. Everything on a `Backend` and its caches and logits is called from one thread
at a time (the engine thread). `Backend.vocabulary` may be used from any thread.

Caches and positions. A `Cache` holds the keys and values of the tokens fed to it, in
order: `cache.tokens` (positions 0 .. len-1). Only the backend changes `cache.tokens`:
`forward` appends the tokens it was fed, `trim` cuts them, `load_state` replaces them.
Several caches of one backend may be alive at once (at least two: the KV-cache manager
keeps one working cache; tests and speculative decoding use a second).

Logits. `forward` returns a `Logits` handle; the logits stay where the backend computed
them (device memory on MLX) until the engine asks: `argmax()` copies one int per row to
the host, `numpy(row)` copies one row, `numpy()` all rows. The engine asks only for what
it needs (greedy decoding: `argmax`; sampling: one row; speculative verification: the
argmax of every row, or a few rows). A handle is valid until the next `forward`, `trim`,
`load_state` or `close` on the same backend (any cache): copy what must outlive that.
Rows are float32 of width `Backend.vocab_size` (the model's output width; it may exceed
the vocabulary's size when the embedding is padded: the engine never samples those ids).

Batches. `forward_batch(items)` feeds several caches in one pass: each `BatchItem` is a
cache, the tokens to append to it (one decode token, a speculative draft, or a chunk of a
prompt) and whether it wants every fed position's logits. It returns one `Logits` per
item, in order, with the same meaning as `forward` for that item alone (up to float
rounding), all valid until the next forward/trim/load_state/close. Each cache appears at
most once. A backend that cannot batch runs the items one after another
(`forward_each`), copying each item's logits so all stay valid; llama.cpp decodes them in
one `llama_decode`, which is what makes several requests decode for about the price of
one on a memory-bound CPU; MLX packs them into one model call (`models/backend.py`; its
CPU build's matmuls cost about the same per row, so there it gains little). The engine keeps a batch within `max_batch_tokens`.

Decoding ahead. A backend whose `decodes_ahead` is True queues work and returns from
`forward`/`forward_batch` before it is computed, and its logits offer
`argmax_pending(row)`: the row's argmax picked on the device as a `PendingToken`, which
it accepts in place of a decode token (`forward((pending,), cache)`, a `BatchItem` of
one) before anyone has read its value. So the engine can queue step n+1 of greedy
decoding before it reads token n (mlx-lm's generate loop), overlapping its host work
(detokenizing, stops, streaming, building the next step) with the compute. `cache.tokens`
then holds the token's value as soon as it is read. Backends that compute synchronously
(llama.cpp, numpy) say False and are never handed a pending token.

Trimming. `trim(cache, n)` keeps the first n tokens. n >= len(cache.tokens) does nothing;
n == 0 always works (it empties the cache). Other n work only when
`cache_capability(cache)` allows them: a full-attention cache can be cut anywhere; a
cache with sliding-window layers that has already dropped keys can be cut back no
further than it still holds exactly (`min_tokens`); a recurrent state cannot be cut at
all (`trimmable=False`). A trim the capability forbids raises `ValueError` and leaves the
cache unchanged. After any trim, feeding the removed tokens again must give the same
logits as the first time (up to float rounding): the KV-cache manager and speculative
decoding rely on it.

Copies. `copy_prefix(source, cache, n)` makes `cache` (its old contents dropped) hold the
first n tokens of `source`, which stays as it was; the copy can be cut back as far as
`source` could (`min_tokens`). llama.cpp shares the cells in its one KV buffer
(`llama_memory_seq_cp`: nothing is copied or serialized); a backend with separate caches
copies through its state (`copy_through_state`). The KV-cache manager uses it to give a
request the prefix another running request holds (a shared system prompt).

State. `save_state` returns opaque bytes that `load_state` of the same backend, model file
and settings (KV type) accepts into an empty or non-empty cache of that backend (its old
contents are dropped). The KV-cache manager parks them in host memory and snapshots them
to disk. `load_state` returns False (leaving the cache empty) for bytes it cannot use,
or for a state that does not end where `tokens` end. A reloaded state may hold less than
the live cache did (llama.cpp saves only the last window of sliding-window layers): the
capability's `restored_min_tokens`, asked before saving, says how far it can be cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol, Sequence

import numpy as np

from localllm.tokenizer.protocol import Tokenizer
from localllm.types import ModelInfo

if TYPE_CHECKING:
    from localllm.backend.preflight import MemoryEstimate
    from localllm.config import Settings


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a loaded model, split by what holds them."""

    weights_bytes: int
    kv_cache_bytes: int  # reserved for keys and values (all caches), now
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


class BatchItem(NamedTuple):
    """One cache's share of a `Backend.forward_batch` pass."""

    cache: "Cache"
    tokens: Sequence[int]
    all_logits: bool = False


class Logits(Protocol):
    """The logits of the positions one `forward` call computed, one row per position
    (all fed positions with `all_logits=True`, else only the last)."""

    n_rows: int

    def numpy(self, row: int | None = None) -> np.ndarray:
        """Host float32 logits: row `row` (negative counts from the end) as shape
        [vocab_size], or with `row=None` every row as [n_rows, vocab_size]. May be a view
        that the next forward/trim/load_state/close overwrites: copy to keep."""

    def argmax(self) -> np.ndarray:
        """The index of the largest logit of every row, int64 shape [n_rows] (the first
        one on ties, as `np.argmax`). Device backends compute it on the device."""


class PendingToken(Protocol):
    """A token chosen on the device, perhaps not computed yet (see "Decoding ahead")."""

    def item(self) -> int:
        """Wait until the token is computed and return its id."""


class Cache(Protocol):
    """Keys and values for `tokens`, in order; owned by the backend that made it."""

    @property
    def tokens(self) -> list[int]:
        """The tokens fed so far (read-only for callers)."""

    def close(self) -> None:
        """Release the memory this cache holds; the cache is unusable afterwards."""


class Backend(Protocol):
    """A model loaded into one compute library."""

    name: str  # the table's name for it: "llamacpp", "mlx", "numpy"
    info: ModelInfo
    n_ctx: int  # most tokens one cache may hold
    vocab_size: int  # width of a logits row
    vocabulary: Tokenizer  # the model's own vocabulary

    def new_cache(self) -> Cache:
        """An empty cache."""

    def forward(self, tokens: Sequence[int], cache: Cache, all_logits: bool = False) -> Logits:
        """Feed `tokens` (at least one) after `cache.tokens` and append them to it; return
        the logits of the last fed position or, with `all_logits`, of every fed position.
        Raises `localllm.errors.ContextOverflowError` (cache unchanged) when the cache
        would hold more than `n_ctx` tokens."""

    max_batch_tokens: int  # most tokens one forward_batch takes in one pass
    # forward returns before computing and takes `Logits.argmax_pending` tokens (module docstring)
    decodes_ahead: bool

    def forward_batch(self, items: Sequence[BatchItem]) -> list[Logits]:
        """`forward` for several caches at once (see the module docstring). Raises
        `ContextOverflowError` with every cache unchanged when one would overflow."""

    def trim(self, cache: Cache, n_tokens: int) -> None:
        """Cut `cache` back to its first `n_tokens` tokens; raises ValueError (cache
        unchanged) when `cache_capability(cache)` does not allow `n_tokens` (see the
        module docstring)."""

    def cache_capability(self, cache: Cache) -> CacheCapability:
        """How far `cache` (and a reload of its saved state) can be trimmed now."""

    def cache_bytes(self, cache: Cache) -> int:
        """Bytes the keys and values of `cache` take now (its buffers: a backend that
        allocates in steps may hold more than its tokens need)."""

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token takes across all layers (an average when
        layers differ): what the KV-cache manager sizes its budget with."""

    def copy_prefix(self, source: Cache, cache: Cache, n_tokens: int) -> None:
        """Make `cache` hold the first `n_tokens` of `source` (see the module docstring);
        `n_tokens` must be one `cache_capability(source)` allows, else ValueError."""

    def save_state(self, cache: Cache) -> bytes:
        """The cache's keys and values as opaque bytes (parking, disk snapshots)."""

    def load_state(self, cache: Cache, tokens: Sequence[int], data: bytes) -> bool:
        """Replace the contents of `cache` with `tokens` from `save_state` bytes; False
        (cache left empty) when the bytes do not fit this backend, model or settings."""

    def memory(self) -> MemoryReport:
        """Bytes held now by the weights, the KV caches and compute buffers."""

    def close(self) -> None:
        """Free everything; the backend and its caches are unusable afterwards."""


class BackendLoader(Protocol):
    """One row of the backend table: how to check for, size and load one backend."""

    name: str

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here; else one line saying why not and what
        to do (install a package, use another --backend)."""

    def inspect(self, path: str) -> ModelInfo:
        """Read a model file's (or folder's) header; raise `ModelFileError` with one clear
        line for anything this backend cannot run."""

    def estimate_memory(self, info: ModelInfo, ctx_size: int, kv_type: str, sequences: int = 1) -> "MemoryEstimate":
        """Bytes a load at `ctx_size` and `kv_type` would need, from the header alone, with
        room for `sequences` caches decoding at once (`Settings.resolved_parallel`)."""

    def load(self, info: ModelInfo, settings: "Settings") -> Backend:
        """Load the model (`settings.ctx_size` is already capped at the model's context)."""


class HostLogits:
    """`Logits` over a host numpy array [n_rows, vocab_size] (llama.cpp, numpy backends)."""

    __slots__ = ("_rows", "n_rows")

    def __init__(self, rows: np.ndarray):
        self._rows = rows
        self.n_rows = rows.shape[0]

    def numpy(self, row: int | None = None) -> np.ndarray:
        return self._rows if row is None else self._rows[row]

    def argmax(self) -> np.ndarray:
        return np.argmax(self._rows, axis=-1)


def forward_each(backend: Backend, items: Sequence[BatchItem]) -> list[Logits]:
    """`forward_batch` for a backend that cannot batch: the items one after another, each
    one's logits copied to the host so that the next forward does not overwrite them."""
    from localllm.errors import ContextOverflowError

    for item in items:
        if len(item.cache.tokens) + len(item.tokens) > backend.n_ctx:
            raise ContextOverflowError(f"{len(item.cache.tokens) + len(item.tokens)} tokens do not fit the context "
                                       f"of {backend.n_ctx}: use a larger --ctx-size")
    out: list[Logits] = []
    for item in items:
        logits = backend.forward(item.tokens, item.cache, item.all_logits)
        out.append(HostLogits(np.array(logits.numpy(), copy=True).reshape(logits.n_rows, -1)))
    return out


def copy_through_state(backend: Backend, source: Cache, cache: Cache, n_tokens: int) -> None:
    """`copy_prefix` for a backend whose caches share nothing: `source`'s saved state
    loaded into `cache`, then cut back (such a backend's reload holds what the live cache
    held, so it cuts back as far)."""
    if n_tokens > len(source.tokens) or not backend.cache_capability(source).allows(n_tokens):
        raise ValueError(f"cannot copy the first {n_tokens} of a cache holding {len(source.tokens)} tokens")
    if n_tokens == 0 or not backend.load_state(cache, list(source.tokens), backend.save_state(source)):
        backend.trim(cache, 0)
        return
    backend.trim(cache, n_tokens)
