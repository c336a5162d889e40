"""Tokens streamed over HTTP (OpenAI SSE from `localllm serve`) versus the in-process
engine, side by side, plus the gaps between deliveries as a client sees them.

Both sides do the same greedy work on the same model file and settings: one prompt,
`max_tokens` new tokens with the end-of-text tokens banned by logit bias (so every run
generates exactly that many). The in-process side is `localllm.runtime.load_model(...)
.complete(...)` in a fresh worker process per run (llama.cpp's thread teams belong to
the thread that computes; see bench_cpu_path.py); the HTTP side is a `localllm serve`
subprocess (warmed up the same way) and an httpx client in this process
parsing every SSE event, as an editor plugin would. Runs are interleaved, and each
starts from a fresh process on both sides (the server's KV-cache manager keeps earlier
requests' tokens, which slows later decodes: the third request on one server is shown
separately).

tok/s: generated tokens / (request sent -> last token received), so request overhead,
prefill and the first token count on both sides. Gap: time between two deliveries of
text to the consumer (an SSE event; an engine wake-up in process), p50/p99 over all
runs; a fast model delivers several tokens per wake-up (the engine wakes its consumer
at most every 4 ms), a slow one one token each. Target (issue #6): HTTP >= 0.95x.

    python benchmarks/bench_server.py [--repeats 5] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import SHARED_MODELS, cached_model  # noqa: E402

PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
SAME_DELIVERY_S = 50e-6  # in process: chunks handed over by one wake-up arrive this close together


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# -- in-process side (one worker process per run) -------------------------------------------

def worker(path: str, n_new: int, n_ctx: int, threads: int, home: str) -> None:
    from localllm.config import Settings
    from localllm.runtime import load_model
    from localllm.types import SamplingParams

    settings = Settings(home=Path(home), cache_dir=Path(home) / "cache", ctx_size=n_ctx, threads=threads)
    model = load_model(path, settings)
    sampling = SamplingParams(temperature=0, logit_bias={t: -100.0 for t in model.engine.backend.vocabulary.end_of_turn_ids})

    def run(n):
        t0 = time.perf_counter()
        stamps = []
        handle = model.complete(PROMPT, sampling, max_tokens=n)
        for chunk in handle:
            if chunk.token is not None:
                stamps.append(time.perf_counter())
        assert handle.stats.generated_tokens == n, handle.stats
        return t0, stamps

    run(4)  # warm-up, as the server gets one
    t0, stamps = run(n_new)
    model.close()
    deliveries = [stamps[0]] + [b for a, b in zip(stamps, stamps[1:]) if b - a > SAME_DELIVERY_S]
    print(json.dumps({"t0": t0, "tokens": len(stamps), "last": stamps[-1], "deliveries": deliveries}))


def in_process(path: Path, n_new: int, n_ctx: int, threads: int, home: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(path), str(n_new), str(n_ctx), str(threads), home],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- HTTP side ---------------------------------------------------------------------------------

class Server:
    def __init__(self, path: Path, n_ctx: int, threads: int, home: str):
        env = dict(os.environ, LOCALLLM_HOME=home, LOCALLLM_CONFIG=str(Path(home) / "none.toml"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localllm", "serve", "--port", "0", "--model", str(path),
             "--ctx-size", str(n_ctx), "--threads", str(threads)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        line = self.proc.stderr.readline()
        m = re.search(r"serving on (http://\S+?) ", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.url = m.group(1)
        self.model = str(path)
        import httpx

        self.client = httpx.Client(base_url=self.url, timeout=600)
        for _ in range(600):
            models = self.client.get("/health").json()["models"]
            if models and models[0]["state"] == "ready":
                break
            time.sleep(0.1)
        self.eos_bias = None

    def stream(self, n_new: int) -> dict:
        if self.eos_bias is None:  # the ids come from the model; ask the in-process side once
            self.eos_bias = _eos_bias(self.model)
        body = {"model": self.model, "prompt": PROMPT, "max_tokens": n_new, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "logit_bias": self.eos_bias}
        deliveries, tokens = [], 0
        t0 = time.perf_counter()
        with self.client.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event["choices"] and event["choices"][0]["text"]:
                    deliveries.append(time.perf_counter())
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        assert tokens == n_new, tokens
        return {"t0": t0, "tokens": tokens, "last": deliveries[-1], "deliveries": deliveries}

    def close(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=60)


def _eos_bias(path: str) -> dict:
    code = ("import sys, json; from localllm.formats.gguf import inspect_gguf;"
            "from localllm.backend.select import load_backend; from localllm.config import Settings;"
            "from pathlib import Path; b = load_backend(sys.argv[1], Settings(home=Path('/nonexistent'),"
            " cache_dir=Path('/nonexistent'), ctx_size=64)); print(json.dumps(sorted(b.vocabulary.end_of_turn_ids)))")
    ids = json.loads(subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                                    check=True).stdout)
    return {str(t): -100 for t in ids}


# -- the comparison ----------------------------------------------------------------------------

def summarize(runs: list[dict]) -> dict:
    rates = [r["tokens"] / (r["last"] - r["t0"]) for r in runs]
    gaps = [b - a for r in runs for a, b in zip(r["deliveries"], r["deliveries"][1:])]
    per_delivery = [r["tokens"] / len(r["deliveries"]) for r in runs]
    return {"rate": statistics.median(rates), "p50": _percentile(gaps, 0.5) * 1e3,
            "p99": _percentile(gaps, 0.99) * 1e3, "per": statistics.median(per_delivery)}


def bench(label: str, path: Path, n_new: int, n_ctx: int, threads: int, repeats: int) -> tuple:
    """Each repeat: a fresh worker process, then a fresh server (warmed up the same way),
    so both sides start from the same state; then two more requests on that server."""
    local, http, later = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-server-") as home:
            local.append(in_process(path, n_new, n_ctx, threads, home))
        with tempfile.TemporaryDirectory(prefix="bench-server-") as home:
            server = Server(path, n_ctx, threads, home)
            try:
                server.stream(4)  # warm-up, as the worker does
                http.append(server.stream(n_new))
                server.stream(n_new)
                later.append(server.stream(n_new))
            finally:
                server.close()
    return label, n_new, summarize(local), summarize(http), summarize(later)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, n_new, n_ctx, threads, home = sys.argv[2:]
        worker(path, int(n_new), int(n_ctx), int(threads), home)
        return
    from localllm.config import physical_cores

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--skip-1b", action="store_true", help="only the tiny real model")
    args = ap.parse_args()

    rows = [bench("stories260K (F32)", SHARED_MODELS / "stories260K" / "stories260K.gguf", 1000, 2048,
                  args.threads, args.repeats)]
    if not args.skip_1b:
        rows.append(bench("llama 1.1B random (Q4_K_M)", cached_model(), 48, 2048, args.threads, args.repeats))

    print(f"\nStreaming over HTTP (OpenAI SSE, /v1/completions) vs the in-process engine "
          f"({args.threads} threads, median of {args.repeats}, greedy, EOS banned)")
    print(f"{'model':<27} {'tokens':>6} {'in-process':>11} {'HTTP SSE':>9} {'ratio':>7}   "
          f"{'gap p50/p99 ms, in-process':>27} {'gap p50/p99 ms, SSE':>20} {'tokens/event':>12}")
    for label, n, local, http, later in rows:
        print(f"{label:<27} {n:>6} {local['rate']:>7.1f} t/s {http['rate']:>5.1f} t/s {http['rate'] / local['rate']:>6.3f}x"
              f"   {local['p50']:>12.2f} / {local['p99']:<12.2f} {http['p50']:>8.2f} / {http['p99']:<9.2f}"
              f" {http['per']:>10.1f}")
    print("\nThe same server's third request (the KV-cache manager still holds the earlier ones):")
    for label, n, local, http, later in rows:
        print(f"{label:<27} {n:>6} {later['rate']:>7.1f} t/s = {later['rate'] / local['rate']:.3f}x the in-process run")


if __name__ == "__main__":
    main()
