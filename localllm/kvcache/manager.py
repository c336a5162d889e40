"""Which cache serves a request, and what stays cached afterwards.

The manager keeps a small pool of backend caches ("slots"), each holding the tokens of
some earlier request. For a new prompt it picks the slot sharing the longest prefix:
- the slot's tokens are all a prefix of the prompt (the next turn of a conversation):
  that slot serves the request and only the new tokens are prefilled;
- they share only part (a common system prompt, or an edited/regenerated turn): the
  shared part is copied into a free slot (`copy_prefix`, which shares the cells rather
  than copying them), so the original stays intact for whoever comes back to it.
Free slots are evicted least-recently-used first when the byte budget or the backend's
KV cells run short. With a `SnapshotStore`, long caches are saved to disk when released
and a prompt that no slot covers is looked up there before any prefill.

It works on token ids and the backend protocol only, and runs on the engine thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from localllm.backend.protocol import Backend, Cache
from localllm.kvcache.prefix import common_prefix_length


@dataclass
class _Slot:
    cache: Cache
    last_used: float = 0.0
    busy: bool = False
    snapshot_len: int = 0  # tokens of this slot already saved to disk


@dataclass
class Lease:
    """A cache lent to one request; give it back with `KVCacheManager.release`."""

    cache: Cache
    reused_tokens: int
    source: str  # "slot", "prefix", "snapshot" or "none"
    _slot: _Slot = field(repr=False, default=None)


@dataclass
class CacheStats:
    requests: int = 0
    hits: int = 0  # requests that reused at least one cached token
    reused_tokens: int = 0
    prompt_tokens: int = 0
    snapshot_loads: int = 0
    snapshot_saves: int = 0
    evictions: int = 0
    bytes_held: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def token_hit_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class KVCacheManager:
    """Lends caches to requests so that shared prefixes are prefilled once.

    `budget_bytes` bounds what idle slots may hold (default: the backend's whole KV pool);
    `max_slots` bounds how many caches exist at once; `enabled=False` gives every request
    a fresh cache (for comparisons and for users who want no reuse).
    """

    def __init__(self, backend: Backend, budget_bytes: int | None = None, max_slots: int = 4,
                 snapshots=None, enabled: bool = True, min_snapshot_tokens: int = 256):
        self.backend = backend
        self.bytes_per_token = max(1, backend.kv_bytes_per_token)
        pool_bytes = backend.kv_cells * self.bytes_per_token
        self.budget_bytes = pool_bytes if budget_bytes is None else min(budget_bytes, pool_bytes)
        self.max_slots = max_slots
        self.snapshots = snapshots
        self.enabled = enabled
        self.min_snapshot_tokens = min_snapshot_tokens
        self.slots: list[_Slot] = []
        self.stats = CacheStats()

    # -- lending ------------------------------------------------------------------------

    def acquire(self, prompt: Sequence[int], reserve: int = 0) -> Lease:
        """A cache for `prompt`, holding as much of it as can be found, with room for
        `reserve` more tokens after it."""
        prompt = list(prompt)
        self.stats.requests += 1
        self.stats.prompt_tokens += len(prompt)
        if not self.enabled:
            slot = self._fresh_slot(need=len(prompt) + reserve)
            return self._lend(slot, 0, "none")

        best, best_len = None, 0
        for slot in self.slots:
            if not slot.busy:
                n = common_prefix_length(slot.cache.tokens, prompt)
                if n > best_len:
                    best, best_len = slot, n
        best_len = min(best_len, len(prompt) - 1)  # the last prompt token is always fed

        if best is not None and best_len > 0 and best_len >= len(best.cache.tokens) - 1:
            # The next turn of that conversation: extend the slot in place.
            self._make_room(len(prompt) + reserve, keep=best)
            self.backend.trim(best.cache, best_len)
            return self._lend(best, best_len, "slot")

        loaded = self._from_snapshot(prompt, reserve, better_than=best_len)
        if loaded is not None:
            return loaded

        if best is not None and best_len > 0:
            # A shared prefix: share its cells into a slot of our own, leave the original.
            best.busy = True  # not evicted while we make room
            slot = self._fresh_slot(need=len(prompt) + reserve)
            best.busy = False
            self.backend.copy_prefix(best.cache, slot.cache, best_len)
            best.last_used = time.monotonic()
            return self._lend(slot, best_len, "prefix")

        return self._lend(self._fresh_slot(need=len(prompt) + reserve), 0, "none")

    def release(self, lease: Lease) -> None:
        """Take the cache back after its request; it stays cached for later requests."""
        slot = lease._slot
        slot.busy = False
        slot.last_used = time.monotonic()
        if not self.enabled:
            self._evict(slot)
            return
        if self.snapshots is not None and len(slot.cache.tokens) >= max(self.min_snapshot_tokens, slot.snapshot_len + 1):
            self.save_snapshot(slot)
        self._enforce_budget()

    def _lend(self, slot: _Slot, reused: int, source: str) -> Lease:
        slot.busy = True
        slot.last_used = time.monotonic()
        if reused:
            self.stats.hits += 1
            self.stats.reused_tokens += reused
        return Lease(slot.cache, reused, source, slot)

    # -- snapshots ----------------------------------------------------------------------

    def save_snapshot(self, slot: _Slot) -> None:
        tokens = list(slot.cache.tokens)
        self.snapshots.save(tokens, self.backend.save_state(slot.cache))
        slot.snapshot_len = len(tokens)
        self.stats.snapshot_saves += 1

    def save_all(self) -> None:
        """Snapshot every idle cache worth keeping (when the engine shuts down)."""
        if self.snapshots is None:
            return
        for slot in self.slots:
            if not slot.busy and len(slot.cache.tokens) >= self.min_snapshot_tokens and len(slot.cache.tokens) > slot.snapshot_len:
                self.save_snapshot(slot)

    def _from_snapshot(self, prompt: list[int], reserve: int, better_than: int) -> Lease | None:
        if self.snapshots is None:
            return None
        found = self.snapshots.find(prompt, min_tokens=better_than + 1)
        if found is None:
            return None
        tokens, data = found
        slot = self._fresh_slot(need=max(len(tokens), len(prompt)) + reserve)
        if not self.backend.load_state(slot.cache, tokens, data):
            self.snapshots.discard(tokens)
            return None
        slot.snapshot_len = len(tokens)
        self.stats.snapshot_loads += 1
        n = min(common_prefix_length(tokens, prompt), len(prompt) - 1)
        self.backend.trim(slot.cache, n)
        return self._lend(slot, n, "snapshot")

    # -- room ---------------------------------------------------------------------------

    def _fresh_slot(self, need: int) -> _Slot:
        """An empty slot, evicting least-recently-used idle slots for room."""
        self._make_room(need)
        idle = [s for s in self.slots if not s.busy]
        if len(self.slots) >= self.max_slots and idle:
            victim = min(idle, key=lambda s: s.last_used)
            self._evict(victim)
        slot = _Slot(self.backend.new_cache())
        self.slots.append(slot)
        return slot

    def _make_room(self, need: int, keep: _Slot | None = None) -> None:
        """Evict idle slots until the KV cells can hold `need` more tokens."""
        def used() -> int:
            return sum(len(s.cache.tokens) for s in self.slots if s is not keep)

        kept_len = len(keep.cache.tokens) if keep else 0
        while used() + max(need, kept_len) > self.backend.kv_cells:
            idle = [s for s in self.slots if not s.busy and s is not keep]
            if not idle:
                return
            self._evict(min(idle, key=lambda s: s.last_used))

    def _enforce_budget(self) -> None:
        while True:
            held = sum(len(s.cache.tokens) for s in self.slots) * self.bytes_per_token
            self.stats.bytes_held = held
            idle = [s for s in self.slots if not s.busy]
            if held <= self.budget_bytes or not idle:
                return
            self._evict(min(idle, key=lambda s: s.last_used))

    def _evict(self, slot: _Slot) -> None:
        self.slots.remove(slot)
        if slot.cache.tokens:
            self.stats.evictions += 1
        slot.cache.close()

    def close(self) -> None:
        self.save_all()
        for slot in list(self.slots):
            self.slots.remove(slot)
            slot.cache.close()
