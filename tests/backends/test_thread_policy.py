"""Threads that follow the free cores (cpu_backend/thread_policy.py): the arithmetic on
two CPU-time samples, the real /proc/stat reading with real competing processes, and the
llama.cpp backend switching its thread count while it decodes beside them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localllm.cpu_backend.thread_policy import CpuSample, FreeCoreThreads, threads_for

HAS_PROC_STAT = Path("/proc/stat").exists()
CPUS = os.cpu_count() or 1
needs_cores = pytest.mark.skipif(not HAS_PROC_STAT or CPUS < 2 or CPUS > 16,
                                 reason="needs /proc/stat and 2-16 CPUs (a competitor must fill half of them)")


def sample(competing: float, total: float, own: float) -> CpuSample:
    return CpuSample(competing_s=competing, total_s=total, own_s=own, wall_s=0.0)


def test_idle_machine_keeps_every_thread():
    assert threads_for(sample(0, 0, 0), sample(0.05, 2.0, 0.0), logical_cpus=2, max_threads=2) == 2


def test_one_busy_competitor_of_two_cores_leaves_one_thread():
    assert threads_for(sample(0, 0, 0), sample(1.0, 2.0, 0.0), logical_cpus=2, max_threads=2) == 1


def test_our_own_work_is_not_competition():
    # Both cores busy, all of it this process's: every thread stays.
    assert threads_for(sample(0, 0, 0), sample(2.0, 2.0, 2.0), logical_cpus=2, max_threads=2) == 2
    # Both busy, half of it ours: one core's worth of others.
    assert threads_for(sample(0, 0, 0), sample(2.0, 2.0, 1.0), logical_cpus=2, max_threads=2) == 1


def test_never_below_one_thread_or_above_the_maximum():
    assert threads_for(sample(0, 0, 0), sample(8.0, 8.0, 0.0), logical_cpus=8, max_threads=4) == 1
    assert threads_for(sample(0, 0, 0), sample(0.0, 8.0, 0.0), logical_cpus=8, max_threads=4) == 4


def test_an_empty_window_decides_nothing():
    assert threads_for(sample(1, 1, 0), sample(1, 1, 0), logical_cpus=2, max_threads=2) is None


def spinners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def poll_until_changed(policy: FreeCoreThreads, limit_s: float = 15.0) -> int | None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        changed = policy.poll()
        if changed is not None:
            return changed
        time.sleep(0.05)
    return None


@needs_cores
def test_real_competitors_take_threads_away():
    policy = FreeCoreThreads(max_threads=CPUS, interval_s=0.3)
    assert policy.active
    procs = spinners(CPUS // 2)
    try:
        changed = poll_until_changed(policy)
    finally:
        stop(procs)
    assert changed is not None and changed <= CPUS - CPUS // 2 + 1 and changed < CPUS


@needs_cores
def test_llamacpp_backend_decodes_with_fewer_threads_beside_a_busy_process(stories_path):
    from localllm.cpu_backend.llamacpp import LlamaCppBackend
    from localllm.formats.gguf import inspect_gguf

    backend = LlamaCppBackend(inspect_gguf(stories_path), ctx_size=256, threads=CPUS, adapt_threads=True)
    backend._free_cores.interval_s = 0.3
    procs = spinners(CPUS // 2)
    try:
        cache = backend.new_cache()
        logits = backend.forward([1], cache)
        deadline = time.monotonic() + 15
        while backend.threads == CPUS and time.monotonic() < deadline:
            if len(cache.tokens) >= 200:
                backend.trim(cache, 1)
            logits = backend.forward([int(logits.argmax()[-1])], cache)
    finally:
        stop(procs)
        backend.close()
    assert backend.threads < CPUS


def test_explicit_threads_are_kept(stories_path, tmp_path):
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    backend = load_backend(str(stories_path), Settings(home=tmp_path, cache_dir=tmp_path, ctx_size=256, threads=2))
    try:
        assert backend._free_cores is None and backend.threads == 2
    finally:
        backend.close()
