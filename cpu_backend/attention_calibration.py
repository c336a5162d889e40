"""Flash attention on or off for one model on this machine, chosen by measuring both.

Whether llama.cpp's CPU flash-attention kernel is faster depends on the model's shape,
the quantization and the machine: on 2 cores it lost decode speed on a random 1.1B
Q4_K_M (8-way GQA, head 64) at 1,400 cached tokens, and won on the real SmolLM2-135M
Q4_1 (3-way GQA) where llama-server's default (on) was 11% faster. No one rule held
across models, so the first load of a model measures: the same short workload (a
prompt prefilled in 32-token chunks, single-token decode steps at 32 and 160 cached
tokens) in two small contexts that differ only in flash attention, alternated, keeping
the fastest of each figure (other work on the machine only adds time). The faster
setting for a chat turn (a prefill plus a reply decoded at a typical depth,
extrapolated linearly from the two depths) wins.

The decision is cached per model file and machine in the user cache folder
(`<cache>/attention-calibration.json`), keyed by the file's path, size and mtime, the
CPU, the thread count, the KV type and the llama.cpp build, so only a first load pays
(well under a second for a small model, about four for a 1B on 2 quiet cores; a machine
too busy to finish in `BUDGET_S` gets flash attention off, uncached).
`--flash-attn on|off` skips it. A quantized V cache (`--kv-type q8_0`) needs flash attention in llama.cpp, so
it is always on there.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp
import numpy as np

CACHE_FILE = "attention-calibration.json"
FORMAT = 1
# The workload a choice is judged on: a chat turn of PREFILL_TOKENS new prompt tokens and
# REPLY_TOKENS decoded at TYPICAL_DEPTH cached tokens (capped at half the context).
PREFILL_TOKENS = 256
REPLY_TOKENS = 256
TYPICAL_DEPTH = 1500
# A machine too busy to calibrate in this time gets the previous default (off), uncached,
# so that a later load on a quieter machine measures. Quiet, a 1.1B Q4_K_M on 2 cores
# takes about 4 s (it prefills 320 tokens); SmolLM2-135M well under one.
BUDGET_S = 6.0


# Measurements made by this process, by key: a process that loads the same file again
# (the server reloading a model, a test suite) measures once even without a cache folder.
_measured_here: dict[str, dict] = {}


@dataclass(frozen=True)
class AttentionTiming:
    """One setting's measured costs: prefill seconds per token and decode seconds per
    step at two depths (`depth_lo`, `depth_hi` tokens cached)."""

    prefill_s_per_token: float
    depth_lo: int
    decode_s_lo: float
    depth_hi: int
    decode_s_hi: float

    def decode_s_at(self, depth: int) -> float:
        """Decode step time at `depth`, linear in the cached tokens (attention is)."""
        slope = (self.decode_s_hi - self.decode_s_lo) / max(1, self.depth_hi - self.depth_lo)
        return max(0.0, self.decode_s_lo + slope * (depth - self.depth_lo))

    def turn_s(self, depth: int) -> float:
        return PREFILL_TOKENS * self.prefill_s_per_token + REPLY_TOKENS * self.decode_s_at(depth)


@dataclass(frozen=True)
class AttentionChoice:
    flash_attn: bool
    reason: str  # one line for --verbose: measured, forced, required, cached


def _context(model, *, flash_attn: bool, n_ctx: int, threads: int, kv_type: int, n_batch: int = 512):
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = cparams.n_ubatch = n_batch
    cparams.n_seq_max = 1
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.type_k = cparams.type_v = kv_type
    cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a calibration context")
    return ctx


class CalibrationTooSlow(Exception):
    """The machine is too busy to finish the measurement in its time budget."""


class _Feeder:
    """Feeds token ids into one sequence of a context, timing each llama_decode."""

    def __init__(self, ctx, n_batch: int, n_vocab: int, deadline: float, seed: int = 0):
        self.ctx = ctx
        self.deadline = deadline
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.pos = 0
        # Token ids only steer which embedding rows are read; any valid ids time the same.
        self.ids = np.random.default_rng(seed).integers(0, n_vocab, size=1 << 16).astype(np.int32)

    def feed(self, n: int) -> float:
        b = self.batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = int(self.ids[(self.pos + i) % len(self.ids)])
            b.pos[i] = self.pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = i == n - 1
        t = time.perf_counter()
        rc = llama_cpp.llama_decode(self.ctx, b)
        done = time.perf_counter()
        if done > self.deadline:  # llama.cpp stopped by the abort callback (rc 2), or late
            raise CalibrationTooSlow()
        if rc != 0:
            raise RuntimeError(f"llama_decode failed during calibration ({rc})")
        self.pos += n
        return done - t

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


def measure(model, *, flash_attn_on: list[bool], threads: int, kv_type: int, depth_hi: int,
            decode_steps: int = 4, rounds: int = 2, chunk: int = 64,
            budget_s: float = float("inf")) -> dict[bool, AttentionTiming]:
    """Time each setting in `flash_attn_on` on the same workload: prefill `chunk`-token
    pieces up to `depth_hi`, decoding `decode_steps` single tokens at `chunk` and at
    `depth_hi` cached tokens. Settings alternate within each of `rounds` rounds; each
    figure is the fastest over rounds and steps: other work on the machine only ever
    adds time, so the minimum is the least disturbed figure. Raises `CalibrationTooSlow`
    past `budget_s` seconds."""
    deadline = time.perf_counter() + budget_s
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    n_ctx = depth_hi + decode_steps + 16
    ctxs = {fa: _context(model, flash_attn=fa, n_ctx=n_ctx, threads=threads, kv_type=kv_type) for fa in flash_attn_on}
    samples = {fa: {"prefill": [], "lo": [], "hi": []} for fa in flash_attn_on}
    # llama.cpp asks this between graph nodes: a decode past the deadline stops there.
    abort = llama_cpp.ggml_abort_callback(lambda _data: time.perf_counter() > deadline)
    for ctx in ctxs.values():
        llama_cpp.llama_set_abort_callback(ctx, abort, None)
    try:
        for r in range(rounds):
            order = flash_attn_on if r % 2 == 0 else list(reversed(flash_attn_on))
            for fa in order:
                ctx = ctxs[fa]
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                feeder = _Feeder(ctx, max(chunk, 1), n_vocab, deadline)
                try:
                    s = samples[fa]
                    s["prefill"].append(feeder.feed(chunk) / chunk)
                    s["lo"].extend(feeder.feed(1) for _ in range(decode_steps))
                    while feeder.pos + chunk <= depth_hi:
                        s["prefill"].append(feeder.feed(chunk) / chunk)
                    s["hi"].extend(feeder.feed(1) for _ in range(decode_steps))
                finally:
                    feeder.close()
    finally:
        for ctx in ctxs.values():
            llama_cpp.llama_free(ctx)
    return {
        fa: AttentionTiming(min(s["prefill"]), chunk, min(s["lo"]), depth_hi, min(s["hi"]))
        for fa, s in samples.items()
    }


def machine_key(threads: int) -> str:
    """The CPU model, core count, thread count and llama.cpp build (its feature line)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    build = llama_cpp.llama_print_system_info().decode(errors="replace")
    raw = f"{cpu}|{os.cpu_count()}|{threads}|{llama_cpp.__version__}|{build}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def model_key(path: str, kv_type: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}|{st.st_size}|{int(st.st_mtime)}|{kv_type}"


def _read_cache(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) and data.get("format") == FORMAT else {"format": FORMAT}
    except (OSError, ValueError):
        return {"format": FORMAT}


def _write_cache(file: Path, data: dict) -> None:
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only cache folder only costs a calibration per load


def _timings(entry) -> tuple[AttentionTiming, AttentionTiming] | None:
    """(off, on) from a cache entry, or None for a missing or malformed one."""
    try:
        return AttentionTiming(**entry["false"]), AttentionTiming(**entry["true"])
    except (TypeError, KeyError):
        return None


def choose_flash_attn(model, *, model_path: str, mode: str, kv_type: str, n_ctx: int, threads: int,
                      cache_dir: Path | None, sequences: int = 1) -> AttentionChoice:
    """Flash attention for a context of `n_ctx` tokens: forced by `mode` ("on"/"off"),
    required by a quantized KV type or by several `sequences` decoding together, or
    measured (`mode` "auto", one sequence) and cached."""
    if mode == "on":
        return AttentionChoice(True, "flash attention on (--flash-attn on)")
    if kv_type != "f16":
        return AttentionChoice(True, f"flash attention on (llama.cpp needs it for a {kv_type} KV cache)")
    if mode == "off":
        return AttentionChoice(False, "flash attention off (--flash-attn off)")
    if sequences > 1:
        # Measured on SmolLM2 Q4_1 (llama.cpp 0.3.36): without flash attention a sequence
        # decoded in one batch with 3 others got logits up to 0.44 away from the same
        # sequence alone, so a greedy reply depended on what else was running; with it
        # they are identical. It also skips the other sequences' cells of the shared
        # KV buffer instead of computing scores over them.
        return AttentionChoice(True, f"flash attention on ({sequences} sequences decode together: without it "
                                     "llama.cpp gives a batched sequence other logits than alone)")
    depth = min(TYPICAL_DEPTH, max(16, n_ctx // 2))
    file = cache_dir / CACHE_FILE if cache_dir is not None else None
    key = f"{machine_key(threads)}|{model_key(model_path, kv_type)}"
    data = _read_cache(file) if file is not None else {"format": FORMAT}
    choices = data.setdefault("choices", {})
    entry, how = choices.get(key), "measured earlier"
    if _timings(entry) is None:
        entry = _measured_here.get(key)
        if entry is not None and entry.get("too_slow"):
            return AttentionChoice(False, "flash attention off (the machine was too busy to measure it earlier)")
        if entry is None:
            from localllm.cpu_backend.llamacpp import KV_GGML_TYPES

            try:
                timings = measure(model, flash_attn_on=[False, True], threads=threads,
                                  kv_type=KV_GGML_TYPES[kv_type], depth_hi=160, chunk=32, budget_s=BUDGET_S)
            except CalibrationTooSlow:
                _measured_here[key] = {"too_slow": True}
                return AttentionChoice(False, f"flash attention off (the machine was too busy to measure it within "
                                              f"{BUDGET_S:.0f} s; a later load measures again)")
            entry = _measured_here[key] = {str(fa).lower(): asdict(t) for fa, t in timings.items()}
            how = "measured"
        choices[key] = entry
        if file is not None:
            _write_cache(file, data)
    off, on = _timings(entry)
    use = on.turn_s(depth) < off.turn_s(depth)
    return AttentionChoice(use, (
        f"flash attention {'on' if use else 'off'} ({how}: a turn of {PREFILL_TOKENS} prompt + {REPLY_TOKENS} reply "
        f"tokens at {depth} cached takes {on.turn_s(depth):.2f} s with it, {off.turn_s(depth):.2f} s without)"))
