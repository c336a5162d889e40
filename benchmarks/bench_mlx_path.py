"""The MLX path against the llama.cpp path on the same GGUF files: load time, prefill and
decode tokens/s, peak RSS.

Each run is a fresh worker process (so peak RSS and load time are the run's own), and the
two backends alternate run by run so machine noise hits both alike; the table shows
medians and the ratio MLX / llama.cpp. Both sides go through the backend protocol the
engine uses (forward, device argmax), greedy, with a 128-token prompt then `--decode`
tokens one at a time.

On Linux MLX computes on the CPU in float32 (its Metal path needs Apple Silicon): these
numbers say what the correctness path costs here, not what a Mac gets.

"MLX blocks" is the weight layout the Metal path loads (Q4_K/Q6_K/Q8_0 kept as GGUF blocks
for the Metal kernels); here its products fall back to the dequantizing reference, so its
decode is measured over only 4 tokens. A second table is the weights' load memory (the
issue's "peak RSS while loading"): peak RSS growth while the GGUF tensors load into MLX
(imports, vocabulary and KV cache not counted), over the file size, for the layout used
here (exact affine repacks; K-quants need float32 scales, Q6_K two matrices) and the block
layout.

    python benchmarks/bench_mlx_path.py [--repeats 3] [--decode 32] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import LLAMA_1B, SHARED_MODELS, cached_model  # noqa: E402

PROMPT_TOKENS = 128


# Variants: (backend name, GGUF block layout kept for the Metal kernels)
VARIANTS = {"llamacpp": ("llamacpp", False), "mlx": ("mlx", False), "mlx-blocks": ("mlx", True)}
BLOCKS_DECODE = 4  # the block layout's reference products are slow on a CPU


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def worker(variant: str, path: str, n_decode: int, threads: int) -> dict:
    from localllm.backend.select import load_backend
    from localllm.config import Settings
    from localllm.models import gguf_loader

    backend_name, blocks = VARIANTS[variant]
    gguf_loader.blocks_by_default = lambda: blocks  # what load_gguf does on Metal (True) or not
    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), backend=backend_name,
                        ctx_size=1024, threads=threads, flash_attn="off")  # no per-load calibration
    t0 = time.perf_counter()
    backend = load_backend(path, settings, force=True)
    load_s = time.perf_counter() - t0
    if blocks:
        n_decode = min(n_decode, BLOCKS_DECODE)
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
    rss = peak_rss()
    backend.close()
    return {"load_s": load_s, "prefill_tps": len(prompt) / prefill_s, "decode_tps": n_decode / decode_s,
            "peak_rss": rss}


def _status_bytes(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def load_memory_worker(variant: str, path: str) -> float:
    """Peak RSS growth while the model's weights load (as tests/models/test_gguf_repack.py
    measures it), over the file size. On Linux the peak is reset first (ru_maxrss keeps
    the peak of the process this one was forked from)."""
    import gguf.quants  # noqa: F401  (imports are not load memory)
    import mlx.core  # noqa: F401
    import localllm.formats.gguf  # noqa: F401
    from localllm.models import gguf_loader
    from localllm.models.architectures import load_gguf_model

    gguf_loader.blocks_by_default = lambda: VARIANTS[variant][1]
    linux = Path("/proc/self/clear_refs").exists()
    if linux:
        Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS") if linux else peak_rss()
    model, weights = load_gguf_model(path)
    growth = (_status_bytes("VmHWM") if linux else peak_rss()) - before
    del model, weights
    return growth / Path(path).stat().st_size


def run_worker(variant: str, path: Path, n_decode: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", variant, str(path), "--decode", str(n_decode), "--threads", str(threads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_load_memory(variant: str, path: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--load-memory-worker", variant, str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (MLX picks its own)")
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODEL"))
    ap.add_argument("--load-memory-worker", nargs=2, metavar=("VARIANT", "MODEL"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.decode, args.threads)))
        return
    if args.load_memory_worker:
        print(json.dumps(load_memory_worker(*args.load_memory_worker)))
        return

    models = {
        "stories260K F32": SHARED_MODELS / "stories260K" / "stories260K.gguf",
        "SmolLM2-135M Q4_1": SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
    if not args.skip_1b:
        models["random llama 1.1B Q4_K_M"] = cached_model(LLAMA_1B, "Q4_K_M")
    metrics = [("load_s", "load s", False), ("prefill_tps", "prefill tok/s", True),
               ("decode_tps", "decode tok/s", True), ("peak_rss", "peak RSS MiB", False)]
    header = f"{'model':28} {'metric':14} {'llama.cpp':>10} {'MLX':>10} {'MLX/llama.cpp':>14} {'MLX blocks':>11} {'blocks/llama.cpp':>17}"
    print(header)
    load_rows = []
    for label, path in models.items():
        runs = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name in runs:  # interleaved
                runs[name].append(run_worker(name, path, args.decode, args.threads))
        med = {key: {n: statistics.median(r[key] for r in rs) for n, rs in runs.items()}
               for key, _, _ in metrics}
        for key, title, _higher_better in metrics:
            m = med[key]
            scale = 1 / (1 << 20) if key == "peak_rss" else 1
            print(f"{label:28} {title:14} {m['llamacpp'] * scale:10.2f} {m['mlx'] * scale:10.2f} "
                  f"{m['mlx'] / m['llamacpp']:13.2f}x {m['mlx-blocks'] * scale:11.2f} "
                  f"{m['mlx-blocks'] / m['llamacpp']:16.2f}x")
        growth = {v: statistics.median(run_load_memory(v, path) for _ in range(args.repeats)) for v in ("mlx", "mlx-blocks")}
        load_rows.append((label, path.stat().st_size, growth))
    print("\nweights' peak RSS growth while loading / file size (target: <= 1.15x)")
    print(f"{'model':28} {'file MiB':>9} {'MLX':>8} {'MLX blocks':>11}")
    for label, size, g in load_rows:
        print(f"{label:28} {size / (1 << 20):9.1f} {g['mlx']:7.2f}x {g['mlx-blocks']:10.2f}x")


if __name__ == "__main__":
    main()
