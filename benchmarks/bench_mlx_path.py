"""The MLX path against the llama.cpp path on the same GGUF files: load time, prefill and
decode tokens/s, peak RSS.

Each run is a fresh worker process (so peak RSS and load time are the run's own), and the
two backends alternate run by run so machine noise hits both alike; the table shows
medians and the ratio MLX / llama.cpp. Both sides go through the backend protocol the
engine uses (forward, device argmax), greedy, with a 128-token prompt then `--decode`
tokens one at a time.

On Linux MLX computes on the CPU in float32 (its Metal path needs Apple Silicon): these
numbers say what the correctness path costs here, not what a Mac gets.

    python benchmarks/bench_mlx_path.py [--repeats 3] [--decode 32] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import LLAMA_1B, SHARED_MODELS, cached_model  # noqa: E402

PROMPT_TOKENS = 128


def worker(backend_name: str, path: str, n_decode: int, threads: int) -> dict:
    from localllm.backend.select import load_backend
    from localllm.config import Settings

    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend=backend_name,
                        ctx_size=1024, threads=threads, flash_attn="off")  # no per-load calibration
    t0 = time.perf_counter()
    backend = load_backend(path, settings, force=True)
    load_s = time.perf_counter() - t0
    vocab = backend.vocabulary
    text = "Once upon a time, there was a little girl named Lily who loved to play in the park. " * 12
    prompt = vocab.encode(text)[:PROMPT_TOKENS]
    cache = backend.new_cache()
    t0 = time.perf_counter()
    token = int(backend.forward(prompt, cache).argmax()[-1])
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_decode):
        token = int(backend.forward([token], cache).argmax()[-1])
    decode_s = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    backend.close()
    return {"load_s": load_s, "prefill_tps": len(prompt) / prefill_s, "decode_tps": n_decode / decode_s,
            "peak_rss": rss}


def run_worker(backend_name: str, path: Path, n_decode: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", backend_name, str(path), "--decode", str(n_decode), "--threads", str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (MLX picks its own)")
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("BACKEND", "MODEL"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.decode, args.threads)))
        return

    models = {
        "stories260K F32": SHARED_MODELS / "stories260K" / "stories260K.gguf",
        "SmolLM2-135M Q4_1": SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    if not args.skip_1b:
        models["random llama 1.1B Q4_K_M"] = cached_model(LLAMA_1B, "Q4_K_M")
    metrics = [("load_s", "load s", False), ("prefill_tps", "prefill tok/s", True),
               ("decode_tps", "decode tok/s", True), ("peak_rss", "peak RSS MiB", False)]
    print(f"{'model':28} {'metric':14} {'llama.cpp':>10} {'MLX':>10} {'MLX/llama.cpp':>14}")
    for label, path in models.items():
        runs = {"llamacpp": [], "mlx": []}
        for _ in range(args.repeats):
            for name in runs:  # interleaved
                runs[name].append(run_worker(name, path, args.decode, args.threads))
        for key, title, _higher_better in metrics:
            med = {n: statistics.median(r[key] for r in rs) for n, rs in runs.items()}
            scale = 1 / (1 << 20) if key == "peak_rss" else 1
            print(f"{label:28} {title:14} {med['llamacpp'] * scale:10.2f} {med['mlx'] * scale:10.2f} "
                  f"{med['mlx'] / med['llamacpp']:13.2f}x")


if __name__ == "__main__":
    main()
