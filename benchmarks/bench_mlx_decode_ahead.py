"""Greedy decode on the MLX backend one step ahead (`Backend.decodes_ahead`) against the
same loaded backend with that capability switched off (synchronous: every token read
before the next step is built), through the two loops that use it: `generate` (plain
decoding) and the engine (its scheduler, one request, no drafting, as `serve` runs a
plain greedy request).

Runs alternate ahead / synchronous (order flipped every round) on one loaded model so
machine noise hits both alike; decode tok/s is (generated - 1) / decode time from the
request's own stats; medians. Also checks both give the same tokens.

On Linux MLX computes on the CPU in float32: what overlapping the host's work with the
compute gains here, not what a Mac's GPU gets. MLX 0.32's CPU backend runs most of a
step inside `mx.async_eval` on the calling thread (SmolLM2: ~82 of ~105 ms), so there is
little to overlap here (measured 0.98-1.06x); on Metal async_eval only queues the work.

    python benchmarks/bench_mlx_decode_ahead.py [--repeats 5] [--tokens 64] [--skip-smollm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import SHARED_MODELS  # noqa: E402

from localllm.backend.select import load_backend  # noqa: E402
from localllm.config import Settings  # noqa: E402
from localllm.engine import Engine  # noqa: E402
from localllm.engine.generate import generate  # noqa: E402
from localllm.kvcache import KVCacheManager  # noqa: E402
from localllm.types import DraftParams, GenerationRequest, SamplingParams  # noqa: E402


class Synchronous:
    """The loaded backend with decoding ahead switched off."""

    decodes_ahead = False

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)


def via_generate(backend, request) -> tuple[float, list[int]]:
    cache = backend.new_cache()
    try:
        chunks = list(generate(backend, cache, request))
    finally:
        cache.close()
    stats = chunks[-1].stats
    return (stats.generated_tokens - 1) / stats.decode_s, [c.token for c in chunks if c.token is not None]


def via_engine(engine, request) -> tuple[float, list[int]]:
    handle = engine.submit(request)
    tokens = [c.token for c in handle if c.token is not None]
    return (handle.stats.generated_tokens - 1) / handle.stats.decode_s, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip-smollm", action="store_true")
    args = ap.parse_args()
    models = [("stories260K F32", SHARED_MODELS / "stories260K" / "stories260K.gguf")]
    if not args.skip_smollm:
        smollm = SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
        models.append(("SmolLM2-135M Q4_1", smollm))
    print(f"MLX on the CPU (float32), {args.tokens} tokens, greedy, {args.repeats} interleaved rounds (medians), "
          f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs\n")
    columns = ["model", "loop", "synchronous tok/s", "ahead tok/s", "ahead / sync", "same tokens"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for label, path in models:
        settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend="mlx", ctx_size=1024,
                            threads=1, parallel=1)
        backend = load_backend(str(path), settings)
        sync_backend = Synchronous(backend)
        prompt = tuple(backend.vocabulary.encode("Once upon a time, there was a little girl named Lily who"))
        engines = {True: Engine(backend, KVCacheManager(backend), parallel=1),
                   False: Engine(sync_backend, KVCacheManager(sync_backend), parallel=1)}
        loops = {"generate": lambda ahead, r: via_generate(backend if ahead else sync_backend, r),
                 "engine": lambda ahead, r: via_engine(engines[ahead], r)}
        try:
            for loop, run in loops.items():
                rates = {True: [], False: []}
                same = True
                for i in range(args.repeats + 1):  # round 0 warms up
                    # A different prompt each round: the engine's KV-cache reuse gives both the same start.
                    request = GenerationRequest(prompt + (13 + i,), SamplingParams(temperature=0),
                                                max_tokens=args.tokens, ignore_eos=True, draft=DraftParams("none"))
                    tokens = {}
                    for ahead in ((True, False) if i % 2 else (False, True)):
                        rate, tokens[ahead] = run(ahead, request)
                        if i:
                            rates[ahead].append(rate)
                    same &= tokens[True] == tokens[False]
                a, s = statistics.median(rates[True]), statistics.median(rates[False])
                row = [label, loop, f"{s:.1f}", f"{a:.1f}", f"{a / s:.2f}x", "yes" if same else "NO"]
                print("| " + " | ".join(row) + " |", flush=True)
        finally:
            for e in engines.values():
                e.close()  # each closes the one backend: a second close does nothing
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
