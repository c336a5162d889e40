"""Flash attention on vs off across models and cached depths: what the load-time
calibration (`localllm.cpu_backend.attention_calibration.measure`) picks at each judged
depth, checked against chat turns actually run with each setting at that depth.

Per model and depth d, two measurements:
- calibration: `measure` as `--flash-attn auto` runs it for a context whose judged depth
  is d (its wall time is the first-load cost), and the setting it picks;
- turns: in one context per setting, a history of d - 256 tokens is filled once; each
  round (settings alternated) then times a 256-token prompt bringing the cache to d and a
  reply of `--reply` single-token decode steps from d on, and removes both again. Median
  over rounds of the prompt's and the reply's tokens/s; the turn time is 256 prompt tokens
  plus 256 reply tokens at those rates. The winner is the setting with the shorter turn.

    python benchmarks/bench_flash_attn.py [--threads 2] [--depths 160,600,1500] [--rounds 3]
        [--reply 96] [--models stories,smollm,1b]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from localllm.cpu_backend.attention_calibration import (  # noqa: E402
    PREFILL_TOKENS, REPLY_TOKENS, _context, _Feeder, _view_cells, measure, on_own_thread,
)
from localllm.cpu_backend import llama_log  # noqa: E402
from localllm.cpu_backend.llamacpp import KV_GGML_TYPES  # noqa: E402

MODELS = Path(os.environ.get("LOCALLLM_TEST_MODELS", REPO.parent / "shared" / "models"))


def model_paths(names: list[str]) -> list[tuple[str, Path]]:
    out = []
    for name in names:
        if name == "stories":
            out.append(("stories260K F32", MODELS / "stories260K" / "stories260K.gguf"))
        elif name == "smollm":
            out.append(("SmolLM2-135M Q4_1", MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
        elif name == "1b":
            from synthetic_model import cached_model

            out.append(("random llama 1.1B Q4_K_M", cached_model()))
        else:
            raise SystemExit(f"unknown model {name!r}: choose from stories, smollm, 1b")
    return out


def turns(model, *, depth: int, reply: int, rounds: int, threads: int, kv_type: int) -> dict[bool, tuple[float, float]]:
    """{flash attention: (prompt tokens/s, reply tokens/s)}, medians over `rounds` chat
    turns at `depth` (see the module docstring)."""
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    prompt = min(PREFILL_TOKENS, depth)
    history = depth - prompt
    ctxs = {fa: _context(model, flash_attn=fa, n_ctx=_view_cells(depth + reply), threads=threads, kv_type=kv_type)
            for fa in (False, True)}
    feeders = {fa: _Feeder(ctx, 512, n_vocab, float("inf"), seed=1) for fa, ctx in ctxs.items()}
    rates = {fa: [] for fa in ctxs}
    try:
        for feeder in feeders.values():
            while feeder.pos < history:
                feeder.feed(min(512, history - feeder.pos))
        for r in range(rounds):
            for fa in (False, True) if r % 2 == 0 else (True, False):
                f = feeders[fa]
                prefill_s = f.feed(prompt)
                decode_s = sum(f.feed(1) for _ in range(reply))
                llama_cpp.llama_memory_seq_rm(f.mem, 0, history, -1)
                f.pos = history
                rates[fa].append((prompt / prefill_s, reply / decode_s))
    finally:
        for f in feeders.values():
            f.close()
        for ctx in ctxs.values():
            llama_cpp.llama_free(ctx)
    return {fa: (statistics.median(p for p, _ in r), statistics.median(d for _, d in r)) for fa, r in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depths", default="160,600,1500")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reply", type=int, default=96, help="decode steps timed per turn")
    ap.add_argument("--kv-type", default="f16", choices=("f16",))
    ap.add_argument("--models", default="stories,smollm,1b")
    args = ap.parse_args()
    llama_log.install(verbose=False)
    kv = KV_GGML_TYPES[args.kv_type]
    depths = [int(d) for d in args.depths.split(",")]
    print(f"threads {args.threads}, KV {args.kv_type}, {args.rounds} turn rounds of a {PREFILL_TOKENS}-token prompt + "
          f"{args.reply} decode steps (medians), load average {os.getloadavg()[0]:.2f} at start\n")
    print("| model | depth | calib s | calib decode ms off / on | calib picks | prompt tok/s off / on "
          "| reply tok/s off / on | turn s off / on | winner | match | calib history |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, path in model_paths(args.models.split(",")):
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_extra_bufts = False
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        try:
            for depth in depths:
                t0 = time.perf_counter()
                calib = measure(model, flash_attn_on=[False, True], threads=args.threads, kv_type=kv, depth=depth)
                calib_s = time.perf_counter() - t0
                picks = calib[True].turn_s() < calib[False].turn_s()
                assert all(set(t.cached_at_steps) == {depth} for t in calib.values())
                # On a thread that ends with them, as the calibration: a thread that has computed
                # keeps an OpenMP team that slows every other thread's passes (on_own_thread).
                real = on_own_thread(turns, model, depth=depth, reply=args.reply, rounds=args.rounds,
                                     threads=args.threads, kv_type=kv)
                turn = {fa: PREFILL_TOKENS / p + REPLY_TOKENS / d for fa, (p, d) in real.items()}
                winner = turn[True] < turn[False]
                print(f"| {name} | {depth} | {calib_s:.1f} | {calib[False].decode_s * 1e3:.2f} / "
                      f"{calib[True].decode_s * 1e3:.2f} | {'on' if picks else 'off'} | "
                      f"{real[False][0]:.0f} / {real[True][0]:.0f} | {real[False][1]:.0f} / {real[True][1]:.0f} | "
                      f"{turn[False]:.2f} / {turn[True]:.2f} | {'on' if winner else 'off'} | "
                      f"{'yes' if picks == winner else 'NO'} | {calib[False].history} |", flush=True)
        finally:
            llama_cpp.llama_model_free(model)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
