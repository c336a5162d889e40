"""Continuous batching in process: 4 concurrent greedy requests through an engine that
decodes them together (`parallel=4`) versus one that serves them in turn (`parallel=1`),
same model file, same threads, runs interleaved, medians.

Prints aggregate generated tokens/s (all tokens / wall time from the first submit to the
last token) and the ratio. Also checks that both give the same texts.

    python benchmarks/bench_batching.py [--repeats 3] [--threads 2] [--tokens 64] [--skip-1b]
                                        [--backend llamacpp|mlx] [--draft auto|none]

`--backend mlx` runs MLX's packed forward_batch (on Linux: the CPU, float32; the 1.1B
model decodes at well under 1 token/s there, so add --skip-1b); `--draft none` keeps the
one-at-a-time engine from drafting, so the two sides differ only in batching.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import benchmark_models  # noqa: E402

from localllm.backend.select import load_backend  # noqa: E402
from localllm.config import Settings  # noqa: E402
from localllm.engine import Engine  # noqa: E402
from localllm.types import DraftParams, GenerationRequest, SamplingParams  # noqa: E402

PROMPTS = ["Once upon a time", "The little dog ran", "Tom and Sue went to the park", "One day, a bird"]


def run(engine: Engine, tokens: int, run_id: int, draft: str = "auto") -> tuple[float, list[str]]:
    vocab = engine.backend.vocabulary
    requests = [GenerationRequest(tuple(vocab.encode(f"{run_id}. {p}")), SamplingParams(temperature=0),
                                  max_tokens=tokens, ignore_eos=True, draft=DraftParams(draft)) for p in PROMPTS]
    t0 = time.perf_counter()
    handles = [engine.submit(r) for r in requests]
    texts = [h.text() for h in handles]
    wall = time.perf_counter() - t0
    return sum(h.stats.generated_tokens for h in handles) / wall, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "mlx"])
    ap.add_argument("--draft", default="auto", choices=["auto", "none"])
    args = ap.parse_args()
    models = benchmark_models(not args.skip_1b)
    print(f"backend {args.backend}, draft {args.draft}, threads {args.threads},"
          f" 4 requests x {args.tokens} tokens, {args.repeats} interleaved runs (medians), "
          f"load average {os.getloadavg()[0]:.1f}\n")
    columns = ["model", "in turn (parallel 1) tok/s", "batched (parallel 4) tok/s", "batched / in turn", "same text"]
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for label, path in models:
        engines = {}
        for p in (1, 4):
            settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=1024,
                                threads=args.threads, flash_attn="off", parallel=p, backend=args.backend)
            engines[p] = Engine(load_backend(str(path), settings), parallel=p)
        rates = {1: [], 4: []}
        same = True
        try:
            run(engines[1], 4, -1, args.draft), run(engines[4], 4, -1, args.draft)  # warm up
            for i in range(args.repeats):
                texts = {}
                for p in ((1, 4) if i % 2 == 0 else (4, 1)):
                    rate, texts[p] = run(engines[p], args.tokens, i, args.draft)
                    rates[p].append(rate)
                same &= texts[1] == texts[4]
        finally:
            for e in engines.values():
                e.close()
        a, b = statistics.median(rates[1]), statistics.median(rates[4])
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
