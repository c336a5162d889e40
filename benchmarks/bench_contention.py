"""Decode speed when the cores are shared: the default thread count against --threads 1,
with and without llama.cpp's spinning held back, on an idle machine and with one busy
competing process.

llama.cpp (built with OpenMP, as llama-cpp-python's wheel is) spins its worker threads
at every barrier. When another process holds a core, a spinning thread waits for a
thread that is not running, and decode collapses. The knobs measured:
  threads N, libgomp default   physical cores, OpenMP as it comes (before #16)
  threads 1                    no barrier at all
  N, passive                   OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning
                               (localllm's default from #16 until the short spin replaced it)
  N, spin 10k                  GOMP_SPINCOUNT=10000: a short spin, then sleep (localllm's default
                               until libgomp's own 300k replaced it, cpu_backend/__init__.py)
  default (now)                what localllm does without flags
Each trial is a fresh `localllm run` process (OpenMP reads its environment once, at
load), greedy, 32 new tokens, decode tokens/s from `--stats json`. Trials of every
configuration are interleaved round by round, so a change in the machine's load hits
them all alike; the table shows medians and the ratio to --threads 1 in the same
condition. "busy" adds one process spinning on a core for the trial's whole length.

    python benchmarks/bench_contention.py [--rounds 3] [--model PATH] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import cached_model  # noqa: E402

from localllm.config import physical_cores  # noqa: E402

BUSY_LOOP = "while True:\n    pass\n"
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


# An empty value is passed as empty: libgomp ignores it, and localllm's own default
# (cpu_backend/__init__.py uses setdefault) leaves it alone, so the row measures
# libgomp's own default, as before that default existed.
UNSET = ""


def configurations(cores: int) -> dict[str, tuple[list[str], dict]]:
    return {
        f"threads {cores}, libgomp default (before)": (["--threads", str(cores)], {"OMP_WAIT_POLICY": UNSET}),
        "threads 1": (["--threads", "1"], {}),
        f"threads {cores}, passive": (["--threads", str(cores)], {"OMP_WAIT_POLICY": "PASSIVE"}),
        f"threads {cores}, spin 10k": (["--threads", str(cores)], {"OMP_WAIT_POLICY": UNSET, "GOMP_SPINCOUNT": "10000"}),
        "default (now)": ([], {}),
    }


def trial(model: Path, args: list[str], env: dict, tokens: int) -> float:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    full.update(env)
    r = subprocess.run(
        [sys.executable, "-m", "localllm", "run", str(model), PROMPT, "--max-tokens", str(tokens),
         "--temperature", "0", "--ctx-size", "256", "--no-cache", "--stats", "json", *args],
        capture_output=True, text=True, env=full, timeout=1800,
    )
    if r.returncode != 0:
        raise SystemExit(f"run failed: {r.stderr[-500:]}")
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    return stats["decode_tokens_per_s"]


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    model = args.model or cached_model()
    configs = configurations(physical_cores())
    results: dict[tuple[str, str], list[float]] = {}
    loads = []
    for rnd in range(args.rounds):
        for condition in ("idle", "busy"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "busy" else None
            try:
                loads.append(load_average())
                for name, (flags, env) in configs.items():
                    speed = trial(model, flags, env, args.tokens)
                    results.setdefault((name, condition), []).append(speed)
                    print(f"round {rnd + 1} {condition:4} {name:36} {speed:7.2f} tok/s", file=sys.stderr, flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(f"\nmodel {model.name}, {physical_cores()} physical cores, {args.rounds} rounds, {args.tokens} tokens, "
          f"load average at the rounds: {'; '.join(loads)}")
    print(f"{'configuration':36} {'idle tok/s':>10} {'x threads 1':>11} {'busy tok/s':>10} {'x threads 1':>11}")
    base = {c: statistics.median(results[("threads 1", c)]) for c in ("idle", "busy")}
    for name in configs:
        cells = []
        for condition in ("idle", "busy"):
            median = statistics.median(results[(name, condition)])
            cells += [f"{median:10.2f}", f"{median / base[condition]:10.2f}x"]
        print(f"{name:36} {' '.join(cells)}")


if __name__ == "__main__":
    main()
