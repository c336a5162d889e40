"""KV-cache manager shared by all backends: turn reuse, a cross-request prefix cache with
LRU eviction under a byte budget, disk snapshots, and the context-overflow policy."""

from localllm.kvcache.manager import CacheStats, KVCacheManager, Lease
from localllm.kvcache.overflow import OverflowPolicy, fit_messages
from localllm.kvcache.snapshots import SnapshotStore

__all__ = ["CacheStats", "KVCacheManager", "Lease", "OverflowPolicy", "SnapshotStore", "fit_messages"]
