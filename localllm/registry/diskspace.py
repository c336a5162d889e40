"""Free disk space, checked before a pull or import writes its first byte.

The probe is `shutil.disk_usage` on the store's disk. `LOCALLLM_TEST_FREE_DISK_BYTES`
replaces the probe's answer (and nothing else): tests use it to stand for a full disk,
since they cannot fill a real one.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from localllm.registry.errors import InsufficientDiskError
from localllm.registry.store import ContentStore

FREE_DISK_OVERRIDE_ENV = "LOCALLLM_TEST_FREE_DISK_BYTES"


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the disk holding `folder` (or its nearest existing parent).
    LOCALLLM_TEST_FREE_DISK_BYTES replaces the probe: tests use it to stand for a full disk."""
    override = os.environ.get(FREE_DISK_OVERRIDE_ENV)
    if override:
        return int(override)
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk(store: ContentStore, needed_by_key: dict[str, int], what: str) -> None:
    """Refuse before the first byte when what is left to write does not fit."""
    needed = sum(max(0, size - store.partial_size(key)) for key, size in needed_by_key.items())
    if needed == 0:
        return
    headroom = min(needed // 20, 512 << 20)  # leave the disk usable after the pull
    free = free_disk_bytes(store.root)
    if needed + headroom > free:
        raise InsufficientDiskError(
            f"not enough disk space for {what} in {store.root}: needs {human_bytes(needed + headroom)} "
            f"({human_bytes(needed)} to write and {human_bytes(headroom)} to spare), {human_bytes(free)} available: "
            "free some space (`localllm rm` unused models) or set LOCALLLM_HOME to a bigger disk"
        )


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


# What a write says when the disk (or the user's quota) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full_error(doing: str, where: Path) -> InsufficientDiskError:
    """The one line for a disk that filled up while `doing` something in `where`."""
    return InsufficientDiskError(
        f"disk full while {doing} in {where}: what was written is kept and the next pull resumes from it; "
        "free some space (`localllm rm` a model you no longer use) and pull again"
    )
