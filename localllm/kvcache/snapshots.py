"""KV snapshots on disk, keyed by model and token prefix, under a size cap.

A snapshot is one file: a small JSON header (its tokens) and the backend's saved state.
A reopened conversation or a restarted server finds the snapshot sharing the longest
prefix with its prompt and loads it instead of prefilling. Files are written to a
temporary name and renamed, so a crash never leaves half a snapshot; when the folder
grows past its cap, the least recently used snapshots go first. A snapshot that a newer
one extends is removed when the newer one is saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Sequence

from localllm.kvcache.prefix import common_prefix_length

MAGIC = b"LLKV1\n"


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
        self._index: dict[Path, list[int]] = {}
        for path in self.folder.glob("*.kvsnap"):
            tokens = self._read_tokens(path)
            if tokens is None:
                path.unlink(missing_ok=True)  # unreadable: a foreign or damaged file
            else:
                self._index[path] = tokens

    def _path(self, tokens: Sequence[int]) -> Path:
        digest = hashlib.sha256(struct.pack(f"<{len(tokens)}i", *tokens)).hexdigest()[:32]
        return self.folder / f"{digest}.kvsnap"

    @staticmethod
    def _read_tokens(path: Path) -> list[int] | None:
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                (n,) = struct.unpack("<Q", f.read(8))
                return json.loads(f.read(n))["tokens"]
        except (OSError, ValueError, KeyError, struct.error):
            return None

    def save(self, tokens: Sequence[int], state: bytes) -> Path:
        tokens = list(tokens)
        path = self._path(tokens)
        header = json.dumps({"tokens": tokens}).encode()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(state)
        os.replace(tmp, path)
        for other, other_tokens in list(self._index.items()):
            if other != path and common_prefix_length(other_tokens, tokens) == len(other_tokens):
                self._drop(other)  # superseded: the new snapshot extends it
        self._index[path] = tokens
        self._enforce_cap()
        return path

    def find(self, prompt: Sequence[int], min_tokens: int = 1) -> tuple[list[int], bytes] | None:
        """The snapshot sharing the longest prefix with `prompt` (at least `min_tokens`)."""
        best, best_len = None, min_tokens - 1
        for path, tokens in self._index.items():
            n = common_prefix_length(tokens, prompt)
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
        return self._index[best], state

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
