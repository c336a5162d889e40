"""KV snapshots on disk, keyed by model and token prefix, under a size cap.

A snapshot is one file: a small JSON header (its tokens) and the backend's saved state.
A reopened conversation or a restarted server finds the snapshot sharing the longest
prefix with its prompt and loads it instead of prefilling. Files are written to a
temporary name and renamed, so a crash never leaves half a snapshot; when the folder
grows past its cap, the least recently used snapshots go first. A snapshot that a newer
one extends is removed when the newer one is saved.

The header also records the fewest tokens the loaded state can be cut back to
(`CacheCapability.restored_min_tokens` when it was saved: llama.cpp saves only the last
window of a sliding-window layer), so a snapshot is chosen only for a prefix it holds
exactly. A file without that field claims nothing shorter than its whole length.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import NamedTuple, Sequence

from localllm.kvcache.prefix import common_prefix_length

MAGIC = b"LLKV1\n"


class Snapshot(NamedTuple):
    tokens: list[int]
    state: bytes
    reusable: int  # tokens of the prompt it was found for that it holds exactly


class _Entry(NamedTuple):
    tokens: list[int]
    min_tokens: int  # fewest tokens (other than 0) the loaded state can be cut back to


def snapshot_key(model_path: str | os.PathLike, kv_type: str, backend: str) -> str:
    """Names one model file's snapshots: content-addressed store blobs by their digest,
    other files by path, size and modification time. The KV type and backend are part of
    the key because the saved state's layout depends on them."""
    path = Path(model_path).resolve()
    st = path.stat()
    identity = path.name if path.name.startswith("sha256-") else f"{path}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(f"{identity}|{kv_type}|{backend}".encode()).hexdigest()[:24]


class SnapshotStore:
    def __init__(self, folder: str | os.PathLike, key: str, cap_bytes: int = 2 << 30):
        self.folder = Path(folder) / key
        self.cap_bytes = cap_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: dict[Path, _Entry] = {}
        for path in self.folder.glob("*.kvsnap"):
            entry = self._read_header(path)
            if entry is None:
                path.unlink(missing_ok=True)  # unreadable: a foreign or damaged file
            else:
                self._index[path] = entry

    def _path(self, tokens: Sequence[int]) -> Path:
        digest = hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]
        return self.folder / f"{digest}.kvsnap"

    @staticmethod
    def _read_header(path: Path) -> _Entry | None:
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
                tokens = header["tokens"]
                return _Entry(tokens, int(header.get("min_tokens", len(tokens))))
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            return None

    def save(self, tokens: Sequence[int], state: bytes, min_tokens: int = 0) -> Path:
        """Store `state` for `tokens`; a load of it can be cut back to `min_tokens` tokens
        at the fewest (see `CacheCapability.restored_min_tokens`)."""
        tokens = list(tokens)
        path = self._path(tokens)
        header = json.dumps({"tokens": tokens, "min_tokens": min_tokens}).encode()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(state)
        os.replace(tmp, path)
        for other, entry in list(self._index.items()):
            # Superseded when the new snapshot extends it and serves every prefix it served.
            if other != path and common_prefix_length(entry.tokens, tokens) == len(entry.tokens) and min_tokens <= entry.min_tokens:
                self._drop(other)
        self._index[path] = _Entry(tokens, min_tokens)
        self._enforce_cap()
        return path

    def find(self, prompt: Sequence[int], min_tokens: int = 1, limit: int | None = None) -> Snapshot | None:
        """The snapshot holding exactly the longest prefix of `prompt` (at least
        `min_tokens` tokens, counting no more than `limit`)."""
        limit = len(prompt) if limit is None else limit
        best, best_len = None, min_tokens - 1
        for path, entry in self._index.items():
            n = min(common_prefix_length(entry.tokens, prompt), limit)
            if n < entry.min_tokens:
                continue  # the loaded state cannot be cut back that far
            if n > best_len:
                best, best_len = path, n
        if best is None:
            return None
        try:
            with open(best, "rb") as f:
                f.seek(len(MAGIC))
                (n,) = struct.unpack("<Q", f.read(8))
                f.seek(n, os.SEEK_CUR)
                state = f.read()
            os.utime(best)  # recently used: evicted last
        except OSError:
            self._drop(best)
            return None
        return Snapshot(self._index[best].tokens, state, best_len)

    def longest_prefix(self, prompt: Sequence[int]) -> int:
        """The most leading tokens of `prompt` any snapshot holds, exactly or not."""
        return max((common_prefix_length(e.tokens, prompt) for e in self._index.values()), default=0)

    def discard(self, tokens: Sequence[int]) -> None:
        self._drop(self._path(list(tokens)))

    def _drop(self, path: Path) -> None:
        self._index.pop(path, None)
        path.unlink(missing_ok=True)

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._index if p.exists())

    def _enforce_cap(self) -> None:
        files = sorted((p for p in self._index if p.exists()), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.cap_bytes:
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            self._drop(oldest)
