"""Decode threads that follow the free cores, when the user left `--threads` to us.

On an idle machine llama.cpp decodes fastest with one thread per physical core. When
another process keeps a core busy, every llama.cpp barrier waits for the thread that
shares that core, and more threads decode slower than fewer: on 2 cores with one busy
competing process, 2 threads gave 0.93x of `--threads 1` (benchmarks/bench_contention.py,
1.1B Q4_K_M, quiet machine, 5 interleaved rounds), while idle they gave 1.33x. No fixed
count is right for both, and the competition comes and goes while a server runs.

So the backend asks `FreeCoreThreads.poll()` before each forward pass. About twice a
second it reads how much CPU time the whole machine spent busy (`/proc/stat`) and how much
of that was this process's own (`os.times()`); the rest is other processes' demand. The
threads are the physical cores that demand leaves free, at least one; llama.cpp takes a
new count per context (`llama_set_n_threads`), so switching costs nothing. Processes with
a positive nice value are not counted as competitors unless we are niced ourselves: the
kernel gives our threads nearly all of a core they share with one.

Where `/proc/stat` does not exist (macOS), the count stays what it was at load.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

PROC_STAT = "/proc/stat"
INTERVAL_S = 0.5
# A longer gap between polls (the engine sat idle) says little about the load now:
# start a new window and keep the current count until it has been measured.
STALE_S = 5.0
# /proc/stat counts in clock ticks of this many per second.
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide CPU time in seconds (competing: what other work could take from us;
    total: every CPU's time, idle included) and this process's own CPU seconds."""

    competing_s: float
    total_s: float
    own_s: float
    wall_s: float


def read_sample(we_are_niced: bool) -> CpuSample | None:
    """A sample of /proc/stat's first line and our own CPU time; None where unreadable."""
    try:
        with open(PROC_STAT, "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 8 or fields[0] != b"cpu":
        return None
    try:
        user, nice, system, idle, iowait, irq, softirq = (int(x) for x in fields[1:8])
        steal = int(fields[8]) if len(fields) > 8 else 0
    except ValueError:
        return None
    competing = user + system + irq + softirq + steal + (nice if we_are_niced else 0)
    total = competing + idle + iowait + (0 if we_are_niced else nice)
    own = os.times()
    return CpuSample(competing / TICKS_PER_S, total / TICKS_PER_S, own.user + own.system, time.monotonic())


def threads_for(before: CpuSample, after: CpuSample, logical_cpus: int, max_threads: int) -> int | None:
    """Threads for the physical cores other processes left free between two samples;
    None when the window holds no measurable time."""
    total = after.total_s - before.total_s
    if total <= 0:
        return None
    others = max(0.0, (after.competing_s - before.competing_s) - (after.own_s - before.own_s))
    busy_cpus = logical_cpus * min(1.0, others / total)
    free_share = max(0.0, 1.0 - busy_cpus / max(1, logical_cpus))
    return max(1, min(max_threads, round(max_threads * free_share)))


class FreeCoreThreads:
    """The thread count to use now, re-measured every `interval_s` of polling."""

    def __init__(self, max_threads: int, interval_s: float = INTERVAL_S):
        self.max_threads = max(1, max_threads)
        self.threads = self.max_threads
        self.interval_s = interval_s
        self._logical = os.cpu_count() or self.max_threads
        self._niced = _niceness() > 0
        self._last = read_sample(self._niced)

    @property
    def active(self) -> bool:
        """Whether this machine can be measured (and there is more than one thread to give)."""
        return self._last is not None and self.max_threads > 1

    def poll(self) -> int | None:
        """The new thread count when it changed since the last call, else None."""
        if self._last is None or self.max_threads == 1:
            return None
        now = time.monotonic()
        elapsed = now - self._last.wall_s
        if elapsed < self.interval_s:
            return None
        sample = read_sample(self._niced)
        if sample is None:
            return None
        before, self._last = self._last, sample
        if elapsed > STALE_S:
            return None
        threads = threads_for(before, sample, self._logical, self.max_threads)
        if threads is None or threads == self.threads:
            return None
        self.threads = threads
        return threads


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0
