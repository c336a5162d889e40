"""Load preflight: will this model fit in memory at the asked context and KV type?

    estimate = check_memory(info, settings, loader.estimate_memory, force=args.force)

Each backend's loader estimates what a load needs from the model's header alone (nothing
is loaded) as a `MemoryEstimate`: weights, KV cache, compute buffers and a fixed
allowance for the process itself. This module compares the sum with the memory
available: Linux `MemAvailable` (lowered to a cgroup's limit when one applies, as in
containers); macOS free + inactive + purgeable pages and, on the MLX backend, the GPU's
recommended working set, read without MLX from `iogpu.wired_limit_mb` or else Metal's
default (3/4 of RAM above 36 GiB, 2/3 below). When the sum does not fit it refuses with
what to change: a shorter --ctx-size, q8_0 KV, a smaller quant or model, or --force
(the advice comes from asking the backend's estimate again with other settings). When
available memory cannot be read, it never refuses.

It imports no backend: the estimate is handed in.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from localllm.types import ModelInfo
from localllm.errors import UserError

OVERHEAD_BYTES = 200 << 20
# Bits per weight of common llama.cpp quants, to size a smaller one.
QUANT_BITS = (("Q6_K", 6.56), ("Q5_K_M", 5.69), ("Q4_K_M", 4.85), ("Q3_K_M", 3.91), ("Q2_K", 3.35))
GIB = 1 << 30


class InsufficientMemoryError(UserError):
    """The model at the asked context would not fit in the memory available."""


@dataclass(frozen=True)
class MemoryEstimate:
    """What a load needs (from a backend's loader) and, once checked, what is available."""

    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    ctx_size: int
    kv_type: str
    kv_contexts: int = 1  # full contexts of KV the backend reserves
    available_bytes: int | None = None  # None: unknown, so never refused
    available_source: str = "unknown"

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes


# (model header facts, context size, KV type) -> what that load needs
Estimator = Callable[[ModelInfo, int, str], MemoryEstimate]


def check_memory(info: ModelInfo, settings, estimate: Estimator, force: bool = False, *,
                 gpu: bool = False, available_bytes: int | None = None) -> MemoryEstimate:
    """Estimate what loading `info` at the settings' context and KV type needs; raise
    InsufficientMemoryError (with what to change) when it does not fit, unless `force`.
    `gpu`: the backend computes on a unified-memory GPU (its working set counts).
    `available_bytes` replaces the probe (for callers that know better, and tests)."""
    if available_bytes is not None:
        available = (available_bytes, "as given")
    else:
        available = available_memory(gpu=gpu)
    need = replace(estimate(info, settings.ctx_size, settings.kv_type),
                   available_bytes=available[0], available_source=available[1])
    if need.fits or force:
        return need
    name = info.name or Path(info.path).name
    raise InsufficientMemoryError(
        f"{name} needs about {_gib(need.total_bytes)} of memory (weights {_gib(need.weights_bytes)}, "
        f"KV cache {_gib(need.kv_cache_bytes)} for {need.ctx_size} tokens x {need.kv_contexts} at {need.kv_type}, "
        f"compute {_gib(need.compute_bytes)}) but {_gib(need.available_bytes)} is available "
        f"({need.available_source}): {_suggest(info, need, estimate)}, or pass --force to load anyway"
    )


def _suggest(info: ModelInfo, est: MemoryEstimate, estimate: Estimator) -> str:
    avail = est.available_bytes or 0
    ideas = []
    for kv_type in dict.fromkeys((est.kv_type, "q8_0")):
        ctx = est.ctx_size
        while ctx >= 512:
            if estimate(info, ctx, kv_type).total_bytes <= avail:
                break
            ctx //= 2
        if ctx >= 512 and (ctx, kv_type) != (est.ctx_size, est.kv_type):
            flags = ([f"--ctx-size {ctx}"] if ctx != est.ctx_size else []) + ([f"--kv-type {kv_type}"] if kv_type != est.kv_type else [])
            ideas.append(" ".join(flags))
    if ideas:
        return "use " + " or ".join(dict.fromkeys(ideas))
    params = info.n_params
    short = estimate(info, min(est.ctx_size, 2048), est.kv_type)
    small = short.total_bytes - short.weights_bytes  # what a smaller quant still needs besides weights
    for quant, bits in QUANT_BITS:
        weights = int(params * bits / 8)
        if weights < est.weights_bytes * 0.9 and weights + small <= avail:
            return f"use a smaller quant such as {quant} (about {_gib(weights)} of weights) or a smaller model"
    return "use a smaller model (the weights alone need more than is available)"


def _gib(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{n / GIB:.1f} GiB"


def available_memory(gpu: bool = False) -> tuple[int | None, str]:
    """(bytes, where the figure comes from); (None, "unknown") when it cannot be read."""
    if sys.platform.startswith("linux"):
        return _linux_available()
    if sys.platform == "darwin":
        return _macos_available(gpu)
    return None, "unknown"


def _linux_available() -> tuple[int | None, str]:
    found: tuple[int | None, str] = (None, "unknown")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = (int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo")
                    break
    except (OSError, ValueError, IndexError):
        pass
    limit = _cgroup_room()
    if limit is not None and (found[0] is None or limit < found[0]):
        found = (limit, "the memory limit of this cgroup")
    return found


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup memory limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def _sysctl(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2)
        return int(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _macos_available(gpu: bool) -> tuple[int | None, str]:
    free, source = None, "unknown"
    try:
        out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=2).stdout
        page = int(out.split("page size of ")[1].split()[0])
        pages = {k.strip(): int(v.strip().rstrip(".")) for k, v in (l.split(":", 1) for l in out.splitlines()[1:] if ":" in l)}
        kinds = ("Pages free", "Pages inactive", "Pages speculative", "Pages purgeable")
        free, source = sum(pages.get(k, 0) for k in kinds) * page, "free, inactive and purgeable pages (vm_stat)"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    if gpu:
        ram = _sysctl("hw.memsize")
        wired_mb = _sysctl("iogpu.wired_limit_mb") or 0
        working_set = wired_mb << 20 if wired_mb else (int(ram * (0.75 if ram > 36 * GIB else 2 / 3)) if ram else None)
        if working_set is not None and (free is None or working_set < free):
            free, source = working_set, "the GPU's recommended working set"
    return free, source
