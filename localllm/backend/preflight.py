"""Load preflight: will this model fit in memory at the asked context and KV type?

    estimate = check_memory(inspect_gguf(path), settings, force=args.force)

The estimate adds up, from the GGUF header alone (nothing is loaded):
  weights   the tensor bytes (llama.cpp maps them; every page is touched when decoding)
  KV cache  layers x KV heads x (key + value width) x cells x bytes per value, where the
            cells are the context times the KV contexts the backend keeps (llama.cpp: 2)
  compute   llama.cpp's graph buffers for a 512-token batch: attention scores over the
            whole cache (not with flash attention, which q8_0 KV turns on), the logits
            of the batch, and the layer activations
  overhead  the process itself (Python, numpy, the library), a fixed allowance
and compares the sum with the memory available: Linux `MemAvailable` (lowered to a
cgroup's limit when one applies, as in containers); macOS free + inactive + purgeable
pages and, on the MLX backend, the GPU's recommended working set, read without MLX from
`iogpu.wired_limit_mb` or else Metal's default (3/4 of RAM above 36 GiB, 2/3 below).
When the sum does not fit it refuses with what to change: a shorter --ctx-size, q8_0
KV, a smaller quant or model, or --force. When available memory cannot be read, it
never refuses. Sliding-window layers (Gemma 2) are counted at full context, so the
estimate errs high for them.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from localllm.types import ModelInfo
from localllm.errors import UserError

KV_BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32}
BATCH_TOKENS = 512
OVERHEAD_BYTES = 200 << 20
# Bits per weight of common llama.cpp quants, to size a smaller one.
QUANT_BITS = (("Q6_K", 6.56), ("Q5_K_M", 5.69), ("Q4_K_M", 4.85), ("Q3_K_M", 3.91), ("Q2_K", 3.35))
GIB = 1 << 30


class InsufficientMemoryError(UserError):
    """The model at the asked context would not fit in the memory available."""


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    overhead_bytes: int
    available_bytes: int | None  # None: unknown, so never refused
    available_source: str
    ctx_size: int
    kv_type: str

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes


@dataclass(frozen=True)
class _Shape:
    n_layer: int
    n_head: int
    n_head_kv: int
    kv_width: int  # key + value width of one KV head
    n_embd: int
    n_ff: int
    n_vocab: int
    n_params: int


def _shape(info: ModelInfo) -> _Shape:
    meta, arch = info.metadata, info.architecture

    def num(key: str, default: int) -> int:
        value = meta.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, (int, float)) and value else default

    n_embd = num("embedding_length", 0)
    n_head = num("attention.head_count", 1)
    head_dim = n_embd // n_head if n_head else 0
    return _Shape(
        n_layer=num("block_count", 0),
        n_head=n_head,
        n_head_kv=num("attention.head_count_kv", n_head),
        kv_width=num("attention.key_length", head_dim) + num("attention.value_length", head_dim),
        n_embd=n_embd,
        n_ff=num("feed_forward_length", 4 * n_embd),
        n_vocab=info.vocab_size or 32000,
        n_params=info.n_params,
    )


def estimate_memory(info: ModelInfo, ctx_size: int, kv_type: str, kv_contexts: int = 2,
                    available: tuple[int | None, str] = (None, "unknown")) -> MemoryEstimate:
    shape = _shape(info)
    ctx = ctx_size  # honoured beyond the training context, as the backend loads it
    cells = ctx * max(1, kv_contexts)
    weights = int(info.metadata.get("_weights_bytes") or 0) or (Path(info.path).stat().st_size if Path(info.path).exists() else 0)
    kv = int(shape.n_layer * shape.n_head_kv * shape.kv_width * cells * KV_BYTES_PER_VALUE[kv_type])
    scores = 0 if kv_type == "q8_0" else shape.n_head * cells  # flash attention never holds them all
    compute = 4 * BATCH_TOKENS * (scores + shape.n_vocab + 4 * shape.n_embd + 2 * shape.n_ff)
    return MemoryEstimate(weights, kv, compute, OVERHEAD_BYTES, available[0], available[1], ctx, kv_type)


def check_memory(info: ModelInfo, settings, force: bool = False, *, kv_contexts: int = 2,
                 available_bytes: int | None = None) -> MemoryEstimate:
    """Estimate what loading `info` at the settings' context and KV type needs; raise
    InsufficientMemoryError (with what to change) when it does not fit, unless `force`.
    `available_bytes` replaces the probe (for callers that know better, and tests)."""
    from localllm.backend.select import resolve_backend_name

    if available_bytes is not None:
        available = (available_bytes, "as given")
    else:
        available = available_memory(gpu=resolve_backend_name(settings.backend) == "mlx")
    estimate = estimate_memory(info, settings.ctx_size, settings.kv_type, kv_contexts, available)
    if estimate.fits or force:
        return estimate
    name = info.name or Path(info.path).name
    raise InsufficientMemoryError(
        f"{name} needs about {_gib(estimate.total_bytes)} of memory (weights {_gib(estimate.weights_bytes)}, "
        f"KV cache {_gib(estimate.kv_cache_bytes)} for {estimate.ctx_size} tokens x {kv_contexts} at {estimate.kv_type}, "
        f"compute {_gib(estimate.compute_bytes)}) but {_gib(estimate.available_bytes)} is available "
        f"({estimate.available_source}): {_suggest(info, estimate, kv_contexts)}, or pass --force to load anyway"
    )


def _suggest(info: ModelInfo, est: MemoryEstimate, kv_contexts: int) -> str:
    avail = est.available_bytes or 0
    ideas = []
    for kv_type in dict.fromkeys((est.kv_type, "q8_0")):
        ctx = est.ctx_size
        while ctx >= 512:
            if estimate_memory(info, ctx, kv_type, kv_contexts).total_bytes <= avail:
                break
            ctx //= 2
        if ctx >= 512 and (ctx, kv_type) != (est.ctx_size, est.kv_type):
            flags = ([f"--ctx-size {ctx}"] if ctx != est.ctx_size else []) + ([f"--kv-type {kv_type}"] if kv_type != est.kv_type else [])
            ideas.append(" ".join(flags))
    if ideas:
        return "use " + " or ".join(dict.fromkeys(ideas))
    params = _shape(info).n_params
    short = estimate_memory(info, min(est.ctx_size, 2048), est.kv_type, kv_contexts)
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
