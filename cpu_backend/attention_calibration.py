"""Flash attention on or off for one model on this machine, chosen by measuring both.

Whether llama.cpp's CPU flash-attention kernel is faster depends on the model's shape,
the quantization, the machine and the depth of the cache: its single-query decode
switches to a split-KV path once the attention view reaches 512 cells (llama.cpp pads
the view to 256-cell pages, so from 256 cached tokens on), and there it lost badly on
2 cores (llama.cpp 0.3.36; decode tok/s off / on at 1,500 cached tokens: stories260K
1,143 / 453, SmolLM2-135M Q4_1 57 / 29, a random 1.1B Q4_K_M 14 / 9), while at 160
cached tokens the two were within 5-10%. So the first load of a model measures a chat
turn at the depth it is judged at, `judged_depth` (half the context, at most
`TYPICAL_DEPTH`), never below it: in one small context per setting, a history of that
depth less a prompt is loaded as copies of one computed cell (`replicated_state`;
attention costs the same whatever the cache holds, and prefilling 1,372 tokens would
cost the 1.1B about 10 s per setting), then a `PROMPT_SAMPLE`-token prompt is timed
twice and single-token decode steps six times at the judged depth, each decoded token
removed again, settings alternated, keeping the fastest of each figure (other work on
the machine only adds time). The faster setting for a turn of `PREFILL_TOKENS` prompt
and `REPLY_TOKENS` reply tokens at that depth wins. Checked against turns actually run
with each setting (benchmarks/bench_flash_attn.py, three models at 160, 600 and 1,500
cached tokens, two runs): the same winner in 17 of 18 cases; the miss was stories260K
at 160 cached, a near tie (0.09 s against 0.11 s a turn).

The decision is cached per model file, judged depth and machine in the user cache
folder (`<cache>/attention-calibration.json`), keyed by the file's path, size and mtime,
the depth, the CPU, the thread count, the KV type and the llama.cpp build, so only a
first load pays. Measured on 2 quiet cores at 1,500 cached tokens: stories260K 0.2 s,
SmolLM2-135M Q4_1 3 s, the 1.1B Q4_K_M 6 s (4 s at 160 cached; the prompts dominate).
A machine too busy to finish in `BUDGET_S` gets flash attention off, uncached.
`--flash-attn on|off` skips it. A quantized V cache (`--kv-type q8_0`) needs flash
attention in llama.cpp, so it is always on there. So is several sequences sharing one
KV buffer (sliding-window and recurrent models with `--parallel` above 1), see
`choose_flash_attn`; plain transformers give each sequence a KV stream of its own and the
measurement decides for them too.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp
import numpy as np

CACHE_FILE = "attention-calibration.json"
FORMAT = 2
# The workload a choice is judged on: a chat turn of PREFILL_TOKENS new prompt tokens and
# REPLY_TOKENS decoded at TYPICAL_DEPTH cached tokens (capped at half the context).
PREFILL_TOKENS = 256
REPLY_TOKENS = 256
TYPICAL_DEPTH = 1500
# The prefill figure is timed on prompts of this many tokens (half a turn's, so that two
# samples per setting cost what one full prompt would).
PROMPT_SAMPLE = 128
# A machine too busy to calibrate in this time gets the previous default (off), uncached,
# so that a later load on a quieter machine measures. Quiet, a 1.1B Q4_K_M on 2 cores
# takes about 6 s at 1,500 cached tokens (it prefills 4 x 128 tokens there); SmolLM2-135M 3.
BUDGET_S = 15.0


# Measurements made by this process, by key: a process that loads the same file again
# (the server reloading a model, a test suite) measures once even without a cache folder.
_measured_here: dict[str, dict] = {}


@dataclass(frozen=True)
class AttentionTiming:
    """One setting's measured costs of a chat turn at `depth` cached tokens: prefill
    seconds per token of the prompt that brings the cache to `depth`, and the fastest
    single-token decode step there. `cached_at_steps` is what llama.cpp's memory held
    before each decode sample (all `depth`: each decoded token is removed again)."""

    prefill_s_per_token: float
    depth: int
    decode_s: float
    cached_at_steps: tuple[int, ...] = ()
    history: str = ""  # how the history before the prompt was filled: "copied" or "computed"

    def turn_s(self) -> float:
        return PREFILL_TOKENS * self.prefill_s_per_token + REPLY_TOKENS * self.decode_s


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
    """Feeds token ids into sequence 0 of a context, timing each llama_decode."""

    def __init__(self, ctx, n_batch: int, n_vocab: int, deadline: float, seed: int = 0):
        self.ctx = ctx
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.deadline = deadline
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

    def cached(self) -> int:
        return llama_cpp.llama_memory_seq_pos_max(self.mem, 0) + 1

    def decode_step_at_depth(self) -> tuple[int, float]:
        """(tokens cached before, seconds) of one single-token decode, whose token is then
        removed again so that every step attends over the same cells."""
        depth = self.cached()
        seconds = self.feed(1)
        llama_cpp.llama_memory_seq_rm(self.mem, 0, depth, -1)
        self.pos = depth
        return depth, seconds

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


def _view_cells(depth: int) -> int:
    """A context big enough for `depth` cached tokens plus the decoded one, in whole
    256-cell pages as llama.cpp pads its attention view, so that the decode steps attend
    over as many cells as in the user's (larger) context at that depth."""
    return max(256, -(-(depth + 1) // 256) * 256)


_CELL_META = np.dtype([("pos", "<i4"), ("n_seq_id", "<u4"), ("seq_id", "<i4")])


def replicated_state(seed: bytes, n_cells: int) -> bytes | None:
    """llama.cpp's saved state of one sequence holding `n_cells` cells at positions
    0..n_cells-1, each a copy of the one cell in `seed` (what llama_state_seq_get_data
    wrote for a sequence of one token); None when `seed` is not laid out as this reads it
    (several streams, cells with extra position data, another llama.cpp state format).

    Attention costs the same whatever the cached keys and values hold, so a history built
    this way times like a prefilled one without computing its tokens."""
    u32, u64 = np.dtype("<u4"), np.dtype("<u8")
    # The context's header (a magic number, the sequence id), then the KV cache's state.
    buf = memoryview(seed)
    if len(buf) < 36 or tuple(np.frombuffer(buf[8:16], u32)) != (1, 1):  # streams, cells
        return None
    meta = np.frombuffer(buf[16:28], _CELL_META)[0]
    v_trans, n_layer = (int(x) for x in np.frombuffer(buf[28:36], u32))
    if meta["n_seq_id"] != 1 or v_trans > 1 or n_layer == 0:
        return None
    cells = np.zeros(n_cells, _CELL_META)
    cells["pos"] = np.arange(n_cells)
    cells["n_seq_id"] = 1
    cells["seq_id"] = meta["seq_id"]
    out = [bytes(buf[:8]), np.array([1, n_cells], u32).tobytes(), cells.tobytes(), bytes(buf[28:36])]
    off = 36

    def take(n: int) -> bytes:
        nonlocal off
        if off + n > len(buf):
            raise ValueError
        off += n
        return bytes(buf[off - n:off])

    try:
        for _ in range(n_layer):  # keys: type, row bytes, one row per cell
            head = take(12)
            out += [head, take(int(np.frombuffer(head[4:], u64)[0])) * n_cells]
        for _ in range(n_layer):  # values, per layer that has them
            if off == len(buf):
                break
            if not v_trans:  # as keys
                head = take(12)
                out += [head, take(int(np.frombuffer(head[4:], u64)[0])) * n_cells]
            else:  # type, element bytes, row width; then per element of the row, one per cell
                head = take(12)
                el, width = (int(x) for x in np.frombuffer(head[4:], u32))
                row = np.frombuffer(take(el * width), np.uint8).reshape(width, 1, el)
                out += [head, np.repeat(row, n_cells, axis=1).tobytes()]
    except ValueError:
        return None
    return b"".join(out) if off == len(buf) else None


def _fill_history(feeder: _Feeder, n: int, chunk: int) -> str:
    """Put `n` cached tokens into the feeder's empty sequence: copies of one computed cell
    loaded as a saved state ("copied"), or, where llama.cpp's state is not laid out as
    `replicated_state` reads it, by prefilling them ("computed")."""
    if n == 0:
        return "copied"
    ctx = feeder.ctx
    feeder.feed(1)
    seed = (ctypes.c_uint8 * llama_cpp.llama_state_seq_get_size(ctx, 0))()
    got = llama_cpp.llama_state_seq_get_data(ctx, seed, len(seed), 0)
    state = replicated_state(bytes(seed[:got]), n)
    llama_cpp.llama_memory_clear(feeder.mem, True)
    feeder.pos = 0
    if state is not None:
        src = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(ctx, src, len(state), 0) == len(state) and feeder.cached() == n:
            feeder.pos = n
            return "copied"
        llama_cpp.llama_memory_clear(feeder.mem, True)
    while feeder.pos < n:
        feeder.feed(min(chunk, n - feeder.pos))
    return "computed"


def measure(model, **kw) -> dict[bool, AttentionTiming]:
    """`_measure` on a thread of its own that ends with it (`on_own_thread`)."""
    return on_own_thread(_measure, model, **kw)


def on_own_thread(fn, *args, **kw):
    """`fn(*args, **kw)` computed on a new thread that ends with it; its result, or its
    exception raised here.

    llama.cpp's OpenMP thread team belongs to the thread that computes and lives as long
    as that thread, and a second team in the process slows the other's passes: measured
    on the load thread, the calibration left its team behind and the engine thread then
    decoded stories260K at 150-180 tok/s instead of 1,060-1,180 (2 threads, 1,024
    cached, flash attention off, the process otherwise the same); the other way round, a
    calibration measured while another thread's team lived timed decode steps 2-10x
    slower and picked the losing setting at 160 and 600 cached tokens. Why exactly is not
    established (likely: libgomp spins less at its barriers once it manages more threads
    than there are cores, and sleeping threads wake slowly on this VM). A team whose
    thread has ended is released with it, and the slowdown is gone."""
    result: list = []

    def run() -> None:
        try:
            result.append((True, fn(*args, **kw)))
        except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
            result.append((False, e))

    thread = threading.Thread(target=run, name="localllm-llama-cpp-once")
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _measure(model, *, flash_attn_on: list[bool], threads: int, kv_type: int, depth: int,
             prompt: int = PROMPT_SAMPLE, prefill_rounds: int = 2, decode_steps: int = 6,
             budget_s: float = float("inf")) -> dict[bool, AttentionTiming]:
    """Time each setting in `flash_attn_on` on a chat turn at `depth` cached tokens, in one
    context per setting: a history of `depth - prompt` tokens (`_fill_history`), then a
    `prompt`-token prefill that brings the cache to `depth` (`prefill_rounds` times, the
    prompt removed again between rounds), then `decode_steps` single-token decode steps,
    each step's token removed again so every step attends over the same cells. Settings
    alternate at each prefill and each step; each figure is the fastest sample: other
    work on the machine only ever adds time, so the minimum is the least disturbed
    figure. Raises `CalibrationTooSlow` past `budget_s` seconds."""
    deadline = time.perf_counter() + budget_s
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    prompt = max(1, min(prompt, depth))
    ctxs = {fa: _context(model, flash_attn=fa, n_ctx=_view_cells(depth), threads=threads, kv_type=kv_type,
                         n_batch=max(prompt, 512)) for fa in flash_attn_on}
    # llama.cpp asks this between graph nodes: a decode past the deadline stops there.
    abort = llama_cpp.ggml_abort_callback(lambda _data: time.perf_counter() > deadline)
    feeders = {}

    def alternated(i: int):
        return flash_attn_on if i % 2 == 0 else list(reversed(flash_attn_on))

    try:
        for fa, ctx in ctxs.items():
            llama_cpp.llama_set_abort_callback(ctx, abort, None)
            feeders[fa] = _Feeder(ctx, max(prompt, 512), n_vocab, deadline)
        fills = {fa: _fill_history(f, depth - prompt, 512) for fa, f in feeders.items()}
        prefill = {fa: [] for fa in flash_attn_on}
        for r in range(prefill_rounds):
            for fa in alternated(r):
                f = feeders[fa]
                prefill[fa].append(f.feed(prompt) / prompt)
                if r + 1 < prefill_rounds:
                    llama_cpp.llama_memory_seq_rm(f.mem, 0, depth - prompt, -1)
                    f.pos = depth - prompt
        steps = {fa: [] for fa in flash_attn_on}
        for i in range(decode_steps):
            for fa in alternated(i):
                steps[fa].append(feeders[fa].decode_step_at_depth())
    finally:
        for feeder in feeders.values():
            feeder.close()
        for ctx in ctxs.values():
            llama_cpp.llama_free(ctx)
    return {
        fa: AttentionTiming(min(prefill[fa]), depth, min(s for _, s in steps[fa]),
                            tuple(d for d, _ in steps[fa]), fills[fa])
        for fa in flash_attn_on
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
    required by a quantized KV type or by several `sequences` sharing one KV buffer, or
    measured (`mode` "auto") and cached."""
    if mode == "on":
        return AttentionChoice(True, "flash attention on (--flash-attn on)")
    if kv_type != "f16":
        return AttentionChoice(True, f"flash attention on (llama.cpp needs it for a {kv_type} KV cache)")
    if mode == "off":
        return AttentionChoice(False, "flash attention off (--flash-attn off)")
    if sequences > 1:
        # Sequences sharing one buffer: without flash attention a sequence decoded beside
        # others got logits up to 0.44 from alone (SmolLM2 Q4_1) and greedy replies parted.
        # Sequences with a stream each (every plain transformer, cpu_backend/llamacpp.py)
        # are not passed here: with flash attention off they decode bit-identically alone
        # and batched at every depth (benchmarks/bench_kv_streams.py), and it is faster.
        # Drafting is no reason to force it either. A verified draft feeds a sequence
        # several tokens where plain decoding feeds one, and llama.cpp rounds the two
        # differently with flash attention off (llamafile's sgemm for several rows of
        # attention, ggml's dot products for one) and with it on from 256 cached tokens (a
        # single token takes the split-KV path): either way a draft can flip a near-tie,
        # within the tolerance the speculative tests state. Forcing it on for drafting cost
        # the server's default (--parallel 2, --draft auto) 1.8x in decode at 1,500 cached
        # tokens (SmolLM2, one stream) for an equality it kept only below 256.
        return AttentionChoice(True, f"flash attention on ({sequences} sequences share one KV buffer: without it "
                                     "llama.cpp gives a batched sequence other logits than alone)")
    depth = judged_depth(n_ctx)
    file = cache_dir / CACHE_FILE if cache_dir is not None else None
    key = f"{machine_key(threads)}|{model_key(model_path, kv_type)}|depth {depth}"
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
                                  kv_type=KV_GGML_TYPES[kv_type], depth=depth, budget_s=BUDGET_S)
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
    use = on.turn_s() < off.turn_s()
    return AttentionChoice(use, (
        f"flash attention {'on' if use else 'off'} ({how}: a turn of {PREFILL_TOKENS} prompt + {REPLY_TOKENS} reply "
        f"tokens at {depth} cached takes {on.turn_s():.2f} s with it, {off.turn_s():.2f} s without)"))


def judged_depth(n_ctx: int) -> int:
    """The cached tokens a chat turn is judged at in a context of `n_ctx` tokens."""
    return min(TYPICAL_DEPTH, max(16, n_ctx // 2))
