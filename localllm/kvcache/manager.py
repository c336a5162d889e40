"""Which cache serves a request, and what stays cached afterwards.

The backend's KV buffer holds one working cache: the conversation being served. Other
caches are kept as saved state in host memory ("parked"), because sequences left in a
shared KV buffer make every later decode step attend over their cells too (measured:
a third cached conversation slowed decode to 0.6x on stories260K).

For a new prompt the manager finds the cache sharing the longest prefix with it:
- the working cache (the next turn of the same conversation): extended in place, only
  the new tokens are prefilled; if it diverges from the prompt (an edited or regenerated
  turn, another request sharing a system prompt), it is parked first when its tail is
  worth keeping, then trimmed back to the common prefix;
- a parked cache: its state is loaded into the working cache (a copy, far cheaper than
  a prefill) and trimmed to the common prefix;
- a disk snapshot (`SnapshotStore`): loaded the same way, so a reopened conversation or
  a restarted process does not re-prefill.
Parked caches are evicted least-recently-used under a byte budget. Long caches are
snapshotted to disk when released and when the manager closes.

Only what a cache holds exactly is reused. A cache with sliding-window layers that no
longer holds the window before some prefix, a saved state that kept only the last window
(llama.cpp), or a recurrent state that cannot be cut back at all: the backend says so
through `cache_capability`, and a source is counted for the longest prefix it allows,
which may be none (`CacheStats.refused_tokens` counts what was found but not usable).

Several requests at once (the engine's continuous batching): the first holds the working
cache; each other one gets a cache of its own, filled from whichever source shares the
longest prefix with its prompt: a cache another running request holds (its prefix copied
with `copy_prefix`, which on llama.cpp shares the cells in the KV buffer: a shared system
prompt is prefilled and stored once), a parked cache or a
snapshot. When a request ends, its cache becomes the working cache if that is idle (the
idle one is parked), else it is parked and closed: one idle cache stays in the KV buffer.

It works on token ids and the backend protocol only, and runs on the engine thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from localllm.backend.protocol import Backend, Cache
from localllm.kvcache.prefix import common_prefix_length, splice_onto_cache

# Parking a diverging working cache is only worth it for a tail this long.
MIN_PARK_TAIL = 32
# The last this many prompt tokens are always fed, even when the cache holds them: a
# prompt's last token then goes through the same kernels whether the prompt was cached or
# not. llama.cpp computes attention for one token of a sequence with other kernels than
# for several (without flash attention: ggml's dot products, llamafile's sgemm from 2
# rows; with it, a single token's split-KV path from 256 cached tokens), which round
# differently: SmolLM2 Q4_1's last-token logits fed alone differed from the whole pass
# by up to 0.76 (7 of 40 prefixes of one prompt), so sending the same prompt twice could
# give two greedy replies; fed as the last 2 or 3 tokens they matched the whole pass.
FED_AT_LEAST = 2


@dataclass
class _Parked:
    tokens: list[int]
    state: bytes
    min_tokens: int  # fewest tokens (other than 0) the reloaded state can be cut back to
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class Lease:
    """The working cache lent to one request; give it back with `release`."""

    cache: Cache
    reused_tokens: int
    source: str  # "working", "parked", "snapshot", "shared" (another running request's) or "none"
    # The prompt to run: the one asked for, or the same bytes with the model's own
    # tokens for its last reply (see `splice_onto_cache`).
    prompt: list[int] = field(default_factory=list)


@dataclass
class CacheStats:
    requests: int = 0
    hits: int = 0  # requests that reused at least one cached token
    reused_tokens: int = 0
    prompt_tokens: int = 0
    parks: int = 0
    restores: int = 0
    snapshot_loads: int = 0
    snapshot_saves: int = 0
    evictions: int = 0
    bytes_held: int = 0
    # Prompt tokens found in a cache that could not be reused exactly (a sliding window
    # or a recurrent state that cannot be cut back there), so they were prefilled again.
    refused_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def token_hit_rate(self) -> float:
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _exact(n_tokens: int, min_tokens: int) -> int:
    """The longest prefix of at most `n_tokens` that a cache allowing no cut below
    `min_tokens` (besides 0) holds exactly."""
    return n_tokens if n_tokens >= min_tokens else 0


def _best_source(sources, prompt: list[int], usable: int, best_len: int, longest: int):
    """(source, prefix length, longest prefix found) for the source among `sources`
    ((source, tokens, min_tokens)) that holds exactly the longest prefix of `prompt`, of at
    most `usable` tokens and more than `best_len`; source None when none does better.
    `longest` also counts prefixes found but not held exactly."""
    best = None
    for source, tokens, min_tokens in sources:
        n = min(common_prefix_length(tokens, prompt), usable)
        longest = max(longest, n)
        n = _exact(n, min_tokens)
        if n > best_len:
            best, best_len = source, n
    return best, best_len, longest


class KVCacheManager:
    """Lends the working cache to requests so that shared prefixes are prefilled once.

    `budget_bytes` bounds the parked caches (default: one full context's KV);
    `enabled=False` gives every request an empty cache (for comparisons, or no reuse).
    """

    def __init__(self, backend: Backend, budget_bytes: int | None = None, snapshots=None,
                 enabled: bool = True, min_snapshot_tokens: int = 256):
        self.backend = backend
        self.bytes_per_token = max(1, backend.kv_bytes_per_token)
        self.budget_bytes = backend.n_ctx * self.bytes_per_token if budget_bytes is None else budget_bytes
        self.snapshots = snapshots
        self.enabled = enabled
        self.min_snapshot_tokens = min_snapshot_tokens
        self.parked: list[_Parked] = []
        self.working: Cache | None = None
        self.lent: list[Cache] = []  # caches of running requests (the working cache too)
        self._snapshot_len = 0  # tokens of the working cache already on disk
        self.stats = CacheStats()

    # -- lending ------------------------------------------------------------------------

    def acquire(self, prompt: Sequence[int]) -> Lease:
        """The working cache, holding the prefix of `lease.prompt` this manager decided to
        reuse (`lease.reused_tokens`, always fewer than the prompt's tokens): the
        generation loop feeds the rest and nothing else."""
        prompt = list(prompt)
        self.stats.requests += 1
        if self.working is None:
            self.working = self.backend.new_cache()
        if any(c is self.working for c in self.lent):
            lease = self._acquire_another(prompt)
            self.lent.append(lease.cache)
            return lease
        lease = self._acquire_working(prompt)
        self.lent.append(lease.cache)
        return lease

    def _acquire_working(self, prompt: list[int]) -> Lease:
        cache = self.working
        if not self.enabled:
            self.stats.prompt_tokens += len(prompt)
            self.backend.trim(cache, 0)
            return Lease(cache, 0, "none", prompt)

        spliced = splice_onto_cache(cache.tokens, prompt, self.backend.vocabulary.token_bytes)
        if spliced is not None:
            prompt = spliced
        self.stats.prompt_tokens += len(prompt)
        usable = max(0, len(prompt) - FED_AT_LEAST)  # fed again for its logits, see FED_AT_LEAST
        found_here = min(common_prefix_length(cache.tokens, prompt), usable)
        here = _exact(found_here, self.backend.cache_capability(cache).min_tokens)
        longest = found_here  # the longest cached prefix, exact or not
        best_parked, parked_len, longest = _best_source(
            [(p, p.tokens, p.min_tokens) for p in self.parked], prompt, usable, here, longest)

        if self.snapshots is not None:
            longest = max(longest, min(self.snapshots.longest_prefix(prompt), usable))
        if best_parked is None and self.snapshots is not None:
            found = self.snapshots.find(prompt, min_tokens=here + 1, limit=usable)
            if found is not None:
                self._park_working(keep=here)
                if self.backend.load_state(cache, found.tokens, found.state):
                    self.stats.snapshot_loads += 1
                    self._snapshot_len = len(found.tokens)
                    return self._lend(cache, found.reusable, "snapshot", prompt, longest)
                self.snapshots.discard(found.tokens)
                here = 0  # the failed load emptied the working cache

        if best_parked is not None:
            self._park_working(keep=here)
            self.parked.remove(best_parked)
            self._snapshot_len = 0
            if self.backend.load_state(cache, best_parked.tokens, best_parked.state):
                self.stats.restores += 1
                return self._lend(cache, parked_len, "parked", prompt, longest)
            here = 0

        self._park_working(keep=here)  # where it diverges, keep the rest for later
        self._snapshot_len = min(self._snapshot_len, here)
        return self._lend(cache, here, "working" if here else "none", prompt, longest)

    def _acquire_another(self, prompt: list[int]) -> Lease:
        """A cache of its own for a request that runs while the working cache is lent."""
        cache = self.backend.new_cache()
        self.stats.prompt_tokens += len(prompt)
        if not self.enabled:
            return Lease(cache, 0, "none", prompt)
        usable = max(0, len(prompt) - FED_AT_LEAST)
        # A running request's cache is copied (`copy_prefix`: llama.cpp shares the cells in
        # place), and the copy holds exactly what the live cache holds.
        sources = [(live, live.tokens, self.backend.cache_capability(live).min_tokens) for live in self.lent]
        sources += [(p, p.tokens, p.min_tokens) for p in self.parked]
        best, best_len, longest = _best_source(sources, prompt, usable, 0, 0)
        if self.snapshots is not None:
            longest = max(longest, min(self.snapshots.longest_prefix(prompt), usable))
            found = self.snapshots.find(prompt, min_tokens=best_len + 1, limit=usable)
            if found is not None:
                if self.backend.load_state(cache, found.tokens, found.state):
                    self.stats.snapshot_loads += 1
                    return self._lend(cache, found.reusable, "snapshot", prompt, longest)
                self.snapshots.discard(found.tokens)
        if isinstance(best, _Parked):
            self.parked.remove(best)
            if self.backend.load_state(cache, best.tokens, best.state):
                self.stats.restores += 1
                return self._lend(cache, best_len, "parked", prompt, longest)
        elif best is not None:
            self.backend.copy_prefix(best, cache, best_len)
            return self._lend(cache, best_len, "shared", prompt, longest)
        return self._lend(cache, 0, "none", prompt, longest)

    def release(self, lease: Lease) -> None:
        """The request is done; its tokens stay cached for the next one: in the working
        cache, or parked when another request holds the working cache."""
        self.lent = [c for c in self.lent if c is not lease.cache]
        if lease.cache is not self.working:
            self._release_another(lease.cache)
            return
        if not self.enabled:
            self.backend.trim(lease.cache, 0)
            return
        n = len(lease.cache.tokens)
        if self.snapshots is not None and n >= self.min_snapshot_tokens and n > self._snapshot_len:
            self._save_snapshot()
        self._enforce_budget()

    def _release_another(self, cache: Cache) -> None:
        if not self.enabled:
            cache.close()
            return
        if any(c is self.working for c in self.lent):  # the working cache is busy: park this one
            self._park(cache, keep=0)
            cache.close()
        else:  # the most recent conversation stays live; the idle working cache is parked
            self._park(self.working, keep=0)
            self.working.close()
            self.working, self._snapshot_len = cache, 0
            n = len(cache.tokens)
            if self.snapshots is not None and n >= self.min_snapshot_tokens:
                self._save_snapshot()
        self._enforce_budget()

    def _lend(self, cache: Cache, reused: int, source: str, prompt: list[int], longest: int = 0) -> Lease:
        # The backend has the last word: a source chosen for `reused` tokens that cannot
        # be cut back there now (it should not happen) starts empty instead.
        reused = min(_exact(reused, self.backend.cache_capability(cache).min_tokens), len(cache.tokens))
        self.backend.trim(cache, reused)
        if reused:
            self.stats.hits += 1
            self.stats.reused_tokens += reused
        if reused < longest:
            self.stats.refused_tokens += longest - reused
        if not reused and source != "none":
            source = "none"
        return Lease(cache, reused, source, prompt)

    # -- parking ------------------------------------------------------------------------

    def _park_working(self, keep: int) -> None:
        """Save the working cache to host memory if its tail beyond the `keep` tokens the
        next request reuses is worth keeping. The caller then trims or reloads it."""
        self._park(self.working, keep)

    def _park(self, cache: Cache, keep: int) -> None:
        if len(cache.tokens) > keep + MIN_PARK_TAIL:
            restored_min = self.backend.cache_capability(cache).restored_min_tokens
            self.parked.append(_Parked(list(cache.tokens), self.backend.save_state(cache), restored_min))
            self.stats.parks += 1

    def _enforce_budget(self) -> None:
        while self.parked and sum(len(p.state) for p in self.parked) > self.budget_bytes:
            self.parked.remove(min(self.parked, key=lambda p: p.last_used))
            self.stats.evictions += 1
        self.stats.bytes_held = sum(len(p.state) for p in self.parked) + self.backend.cache_bytes(self.working)

    # -- snapshots ----------------------------------------------------------------------

    def _save_snapshot(self) -> None:
        tokens = list(self.working.tokens)
        restored_min = self.backend.cache_capability(self.working).restored_min_tokens
        self.snapshots.save(tokens, self.backend.save_state(self.working), restored_min)
        self._snapshot_len = len(tokens)
        self.stats.snapshot_saves += 1

    def close(self) -> None:
        """Snapshot the working cache if it is worth keeping, then free it."""
        if self.working is None:
            return
        n = len(self.working.tokens)
        if self.enabled and self.snapshots is not None and n >= self.min_snapshot_tokens and n > self._snapshot_len:
            self._save_snapshot()
        for cache in self.lent:
            if cache is not self.working:
                cache.close()
        self.lent = []
        self.working.close()
        self.working = None
        self.parked.clear()
