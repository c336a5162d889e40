"""Advisory file locks between processes (and threads) sharing one model store.

Built on `flock`: the kernel drops a lock when its holder dies, so a pull killed with
SIGKILL never leaves a stale lock behind (a lock *file* may stay; it is harmless).
Waiting polls, so a waiter can be cancelled and can report progress while it waits.
POSIX only (Linux, macOS), which is where localllm runs.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable

from localllm.registry.errors import PullCancelled


class FileLock:
    """`with FileLock(path):` holds an exclusive lock; `shared=True` a shared one."""

    def __init__(self, path: Path, shared: bool = False):
        self.path = Path(path)
        self.shared = shared
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def acquire(
        self,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
        poll_s: float = 0.1,
    ) -> None:
        """Wait for the lock; `on_wait` runs on each poll; a set `cancel` raises PullCancelled."""
        while not self.try_acquire():
            if cancel is not None and cancel.is_set():
                raise PullCancelled(f"cancelled while waiting for {self.path.name}")
            if on_wait is not None:
                on_wait()
            time.sleep(poll_s)

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
