"""Fetch one hub file into the store: resumable, retried, verified, then admitted.

The bytes go to `partials/<key>.partial`, appended with HTTP Range from wherever the
partial ends, so a dropped connection, a Ctrl-C, a killed process or a reboot costs
only what was not yet written. The sha256 is computed as the bytes arrive (after
re-reading the kept prefix once when resuming); a file is admitted into `blobs/` only
when it has exactly the announced size and digest. A mismatch deletes the partial,
since resuming a corrupted prefix could never succeed.

One process at a time fetches a given file (a per-file lock); another pull of the same
file waits, reporting the first one's progress, and then finds the blob admitted.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

from localllm.registry.entries import PullProgress
from localllm.registry.diskspace import DISK_FULL_ERRNOS, disk_full_error
from localllm.registry.errors import DigestMismatchError, HubUnavailableError, PullCancelled
from localllm.registry.hub import RETRYABLE_STATUS, HubClient
from localllm.registry.store import ContentStore

Report = Callable[[PullProgress], None]
FSYNC_EVERY = 64 << 20  # bound what a power cut can take from a partial
REPORT_EVERY_S = 0.1


@dataclass(frozen=True)
class BlobRequest:
    """One file of a repo at a pinned revision, with what the hub says it must be."""

    repo: str
    revision: str
    path: str
    size: int
    sha256: str | None  # from LFS metadata
    git_oid: str | None  # for small non-LFS files, which have no sha256 on the hub

    @property
    def key(self) -> str:
        return f"sha256-{self.sha256}" if self.sha256 else f"git-{self.git_oid}"


class _Retry(Exception):
    """A failure worth retrying from where the partial ends."""


class _Hasher:
    """sha256 (and the git blob sha1 when that is all the hub gives) of a partial's prefix."""

    def __init__(self, req: BlobRequest):
        self.req = req
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(b"blob %d\0" % self.req.size) if not self.req.sha256 else None
        self.count = 0

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)
        self.count += len(data)

    def catch_up(self, partial: Path, offset: int) -> None:
        """Make the hash cover exactly the first `offset` bytes of the partial."""
        if self.count == offset:
            return
        self.reset()
        if offset == 0:
            return
        with open(partial, "rb") as f:
            while self.count < offset:
                block = f.read(min(8 << 20, offset - self.count))
                if not block:
                    break
                self.update(block)


class _Throttle:
    def __init__(self, report: Report, req: BlobRequest):
        self.report, self.req, self.last = report, req, 0.0

    def __call__(self, completed: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= REPORT_EVERY_S:
            self.last = now
            self.report(PullProgress("downloading", self.req.sha256, self.req.size, completed, self.req.path))


def fetch_blob(
    hub: HubClient, store: ContentStore, req: BlobRequest, report: Report, cancel: threading.Event | None = None
) -> str:
    """Make sure the file is a blob in the store; return its sha256."""
    progress = _Throttle(report, req)
    if req.sha256 and store.has_blob(req.sha256, req.size):
        progress(req.size, force=True)
        return req.sha256
    lock = store.blob_lock(req.key)
    lock.acquire(cancel=cancel, on_wait=lambda: progress(store.partial_size(req.key)))
    try:
        if req.sha256 and store.has_blob(req.sha256, req.size):  # another pull fetched it meanwhile
            progress(req.size, force=True)
            return req.sha256
        return _fetch_locked(hub, store, req, report, progress, cancel)
    finally:
        lock.release()


def _fetch_locked(hub, store, req, report, progress, cancel) -> str:
    partial = store.partial_path(req.key)
    partial.parent.mkdir(parents=True, exist_ok=True)
    hasher = _Hasher(req)
    url = hub.file_url(req.repo, req.revision, req.path)
    failures = 0
    while True:
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > req.size:
            partial.unlink()
            offset = 0
        hasher.catch_up(partial, offset)
        progress(offset, force=True)
        if offset == req.size:
            break
        try:
            _transfer(hub, req, url, partial, offset, hasher, progress, cancel)
            if partial.stat().st_size >= req.size:
                continue  # complete: the loop's size check ends it
            raise _Retry("the connection ended before the end of the file")
        except _Retry as e:
            problem = str(e)
        now = partial.stat().st_size if partial.exists() else 0
        failures = 1 if now > offset else failures + 1  # progress resets the count
        if failures >= hub.retry.attempts:
            raise HubUnavailableError(
                f"downloading {req.path} from hf.co/{req.repo} keeps failing ({problem}); "
                f"{now:,} of {req.size:,} bytes are kept: run the same pull again to resume"
            )
        delay = hub.retry.delay(failures)
        report(PullProgress("downloading", req.sha256, req.size, now, req.path,
                            detail=f"{problem}; retrying in {delay:.1f} s from {now:,} bytes"))
        _sleep(delay, cancel, req, now)
    report(PullProgress("verifying", req.sha256, req.size, req.size, req.path))
    digest = hasher.sha256.hexdigest()
    expected = req.sha256 or req.git_oid
    got = digest if req.sha256 else hasher.git.hexdigest()
    if got != expected:
        partial.unlink(missing_ok=True)
        kind = "sha256" if req.sha256 else "git blob id"
        raise DigestMismatchError(
            f"{req.path} from hf.co/{req.repo} is corrupted: its {kind} is {got[:16]}… but the hub says "
            f"{expected[:16]}…; the bad download was removed and nothing was added: pull again "
            "(if it repeats, the server at HF_ENDPOINT is serving a damaged file)"
        )
    store.admit(partial, digest)
    return digest


def _transfer(hub, req, url, partial: Path, offset: int, hasher: _Hasher, progress, cancel) -> None:
    """Append the rest of the file from `offset`; raise _Retry on what a retry may fix."""
    try:
        with hub.stream(url, offset) as resp:
            if resp.status_code == 416:  # the server has less than we kept: start over
                partial.unlink(missing_ok=True)
                raise _Retry("the server refused the resume point")
            if resp.status_code in RETRYABLE_STATUS:
                raise _Retry(f"HTTP {resp.status_code}")
            hub.raise_for_status(resp, req.repo, revision=req.revision, path=req.path)
            if offset and resp.status_code == 200:  # Range ignored: the body is the whole file
                offset = 0
                hasher.reset()
            elif resp.status_code == 206 and not resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                raise _Retry(f"the server resumed at the wrong place ({resp.headers.get('Content-Range')})")
            with open(partial, "r+b" if partial.exists() else "wb") as f:
                f.seek(offset)
                f.truncate()
                try:
                    offset = _append(resp, f, req, offset, hasher, progress, cancel)
                finally:  # also on Ctrl-C and drops: what was written survives a reboot
                    f.flush()
                    os.fsync(f.fileno())
    except httpx.TransportError as e:
        raise _Retry(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(f"writing {req.path}", partial.parent) from None
        raise


def _append(resp, f, req: BlobRequest, offset: int, hasher: _Hasher, progress, cancel) -> int:
    """Write the response body at `offset`, hashing and reporting as it goes."""
    unsynced = 0
    for chunk in resp.iter_bytes():
        if cancel is not None and cancel.is_set():
            raise PullCancelled(
                f"pull cancelled during {req.path}: {offset:,} of {req.size:,} bytes are kept "
                "and the next pull of this model resumes from there"
            )
        if offset + len(chunk) > req.size:
            chunk = chunk[: req.size - offset]  # the digest check will judge the file
        f.write(chunk)
        hasher.update(chunk)
        offset += len(chunk)
        unsynced += len(chunk)
        if unsynced >= FSYNC_EVERY:
            f.flush()
            os.fsync(f.fileno())
            unsynced = 0
        progress(offset)
        if offset >= req.size:
            break
    return offset


def _sleep(seconds: float, cancel: threading.Event | None, req: BlobRequest, kept: int) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise PullCancelled(
            f"pull cancelled during {req.path}: {kept:,} of {req.size:,} bytes are kept "
            "and the next pull of this model resumes from there"
        )
