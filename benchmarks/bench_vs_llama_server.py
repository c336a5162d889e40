"""`localllm serve` against llama.cpp's own `llama-server`, same GGUF, same threads, over
HTTP (OpenAI streaming), one client, runs interleaved, medians.

llama-server is built from the llama.cpp sources vendored in the installed
llama-cpp-python's sdist (benchmarks/llama_server_build.py; cached in the user cache
folder, never committed), so both run the same llama.cpp revision. llama-server keeps its
defaults (flash attention auto) except `--parallel 4`, `-c` 4 x --ctx (llama-server splits
its context between its slots: each gets --ctx, the most one localllm sequence may hold)
and, where localllm keeps weights out of llama.cpp's repacked buffers, `--no-repack`
(`same_weight_layout`); localllm runs with
`--parallel 4` and its defaults (flash attention measured at load; `--draft` as given, auto by
default: `--draft none` compares the two engines alone). Both start from the environment the
bench was given: llama-server once inherited localllm's OpenMP setting from this process
(passive waiting then), which halved its decode on 2 cores.

Per model (SmolLM2-135M Q4_1, the random 1.1B Q4_K_M from synthetic_model.py):
- one stream: prefill tok/s (prompt tokens / time to first token) and decode tok/s
  (tokens after the first / time from the first to the last), a fresh prompt each run;
- 4 concurrent streams: aggregate tok/s (all tokens / wall time) and p50/p99 of the gaps
  between a stream's deliveries;
- a 10-turn chat: each turn's time to first token (the earlier turns are cached on both).
End tokens are banned with logit_bias so every run generates exactly max_tokens.

    python benchmarks/bench_vs_llama_server.py [--repeats 5] [--threads 2] [--skip-1b | --only-1b] [--draft none]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The environment as the user gave it, before this process imports localllm's CPU backend
# (which sets OpenMP's wait policy in os.environ for llama.cpp in this process): each
# server starts from it, so llama-server runs with its own defaults, not ours.
USER_ENV = dict(os.environ)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server_build import ensure_llama_server  # noqa: E402
from synthetic_model import benchmark_models  # noqa: E402

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
         "with her friends and her dog. One day she found a shiny red ball under a big green tree. ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Server:
    """One server process and an httpx client for it."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict | None = None):
        import httpx

        self.name, self.port = name, port
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # A fresh connection per request, for both servers alike: llama-server (cpp-httplib)
        # closes a kept-alive connection after 100 requests or 5 idle seconds, and a request
        # sent on it as it closes failed the 9-round run ("Server disconnected without
        # sending a response"). Connecting to localhost costs well under a millisecond.
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                                   limits=httpx.Limits(max_keepalive_connections=0))
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"{name} exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if self.client.get("/health").status_code == 200:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        self.model = self.client.get("/v1/models").json()["data"][0]["id"]

    def stream(self, path: str, body: dict) -> tuple[float, list[float], int]:
        """(request start, arrival time of each delivery that carried text, tokens)."""
        body = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}, **body}
        stamps, tokens, t0 = [], 0, time.perf_counter()
        with self.client.stream("POST", path, json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"].get("completion_tokens", tokens)
                for choice in event.get("choices", []):
                    text = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if text:
                        stamps.append(time.perf_counter())
        return t0, stamps, tokens

    def close(self) -> None:
        self.client.close()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except Exception:
            self.proc.kill()


def same_weight_layout() -> list[str]:
    """llama-server's flag for the weight layout localllm's backend uses: `--no-repack` on a
    build with llama.cpp's AMX kernels (they crashed on batches of quantized weights on
    the Xeon VM this started on; cpu_backend/llamacpp.py AMX_BUILD keeps weights out of
    every extra buffer there), else nothing: both repack (llama-server's default). Measured
    on an AVX-512 EPYC (2 threads, the 1.1B Q4_K_M, 400-token prompt): repacked weights
    prefill 31% slower (172 against 250 tok/s) and decode 20% faster (43 against 36),
    so comparing one layout with the other measures the layout, not the engines."""
    from localllm.cpu_backend.llamacpp import AMX_BUILD

    return ["--no-repack"] if AMX_BUILD else []


def eos_bias(model_path: Path) -> dict:
    from localllm.cpu_backend.vocab import LlamaCppVocabulary

    vocab = LlamaCppVocabulary.from_file(model_path)
    try:
        ids = set(vocab.end_of_turn_ids) | {vocab.eos_id}
        return {str(i): -100 for i in ids if i is not None and i >= 0}
    finally:
        vocab.close()


def one_stream(server: Server, run: int, bias: dict, n_new: int, n_prompt_words: int) -> dict:
    prompt = f"Story number {run * 7919 + server.port}. " + " ".join((STORY * 40).split()[:n_prompt_words])
    prompt_tokens = len(server.client.post("/tokenize", json={"content": prompt}).json()["tokens"]) \
        if server.name == "llama-server" else None
    t0, stamps, tokens = server.stream("/v1/completions", {"prompt": prompt, "max_tokens": n_new, "temperature": 0,
                                                           "logit_bias": bias})
    return {"ttft": stamps[0] - t0, "decode": (tokens - 1) / (stamps[-1] - stamps[0]), "tokens": tokens,
            "prompt_tokens": prompt_tokens}


def concurrent_streams(server: Server, run: int, bias: dict, n_new: int, n: int = 4) -> dict:
    def go(i):
        return server.stream("/v1/completions", {"prompt": f"Tale {run}-{i}-{server.port}. " + STORY,
                                                 "max_tokens": n_new, "temperature": 0, "logit_bias": bias})

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(go, range(n)))
    wall = time.perf_counter() - t0
    gaps = [b - a for _, stamps, _ in results for a, b in zip(stamps, stamps[1:])]
    return {"aggregate": sum(tok for _, _, tok in results) / wall, "gaps": gaps}


def chat_ttfts(server: Server, run: int, bias: dict, turns: int = 10) -> list[float]:
    messages = [{"role": "system", "content": f"You are a helpful assistant (session {run}-{server.port})."}]
    out = []
    for t in range(turns):
        messages.append({"role": "user", "content": f"Turn {t}: tell me one more sentence of the story. {STORY}"})
        t0, stamps, _ = server.stream("/v1/chat/completions", {"messages": messages, "max_tokens": 24,
                                                               "temperature": 0, "logit_bias": bias})
        out.append(stamps[0] - t0)
        messages.append({"role": "assistant", "content": "And then the ball rolled away into the tall grass."})
    return out


def bench_model(label: str, path: Path, args, llama_server: Path) -> list[str]:
    bias = eos_bias(path)
    home = tempfile.mkdtemp(prefix="bench-localllm-")
    env = dict(USER_ENV, LOCALLLM_HOME=home, LOCALLLM_CONFIG=os.path.join(home, "config.toml"))
    p1, p2 = _free_port(), _free_port()
    servers = [
        Server("llama-server", [str(llama_server), "-m", str(path), "-t", str(args.threads), "-c", str(4 * args.ctx),
                                "--parallel", "4", "--port", str(p1), "--host", "127.0.0.1", "--no-webui",
                                *same_weight_layout()], p1, env=USER_ENV),
        Server("localllm", [sys.executable, "-m", "localllm", "serve", "--model", str(path), "--threads", str(args.threads),
                            "--ctx-size", str(args.ctx), "--parallel", "4", "--port", str(p2), "--draft", args.draft],
               p2, env=env),
    ]
    try:
        single = {s.name: [] for s in servers}
        multi = {s.name: [] for s in servers}
        chats = {s.name: [] for s in servers}
        for s in servers:  # warm up (page in the weights, first graph builds)
            one_stream(s, -1, bias, 8, 20)
        for run in range(args.repeats):
            order = servers if run % 2 == 0 else servers[::-1]
            for s in order:
                single[s.name].append(one_stream(s, run, bias, args.tokens, args.prompt_words))
            for s in order:
                multi[s.name].append(concurrent_streams(s, run, bias, args.tokens))
            if run < args.chat_repeats:
                for s in order:
                    try:
                        chats[s.name].append(chat_ttfts(s, run, bias))
                    except Exception as e:  # say which server failed and how, keep the rest
                        s.log.seek(0)
                        tail = s.log.read().decode(errors="replace")[-1500:]
                        print(f"{s.name} failed the chat ({e}; exit code {s.proc.poll()}):\n{tail}", file=sys.stderr)
        n_prompt = next(r["prompt_tokens"] for r in single["llama-server"] if r["prompt_tokens"])
        med = statistics.median
        rows = []

        def row(metric, key_fn, higher_better=True):
            a, b = key_fn("localllm"), key_fn("llama-server")
            ratio = (a / b) if higher_better else (b / a)
            rows.append(f"| {label} | {metric} | {a:.1f} | {b:.1f} | {ratio:.2f}x |")

        row("1 stream prefill tok/s", lambda n: n_prompt / med(r["ttft"] for r in single[n]))
        row("1 stream decode tok/s", lambda n: med(r["decode"] for r in single[n]))
        row("4 streams aggregate tok/s", lambda n: med(r["aggregate"] for r in multi[n]))
        row("4 streams gap p50 ms", lambda n: 1e3 * _pct([g for r in multi[n] for g in r["gaps"]], 0.5), False)
        row("4 streams gap p99 ms", lambda n: 1e3 * _pct([g for r in multi[n] for g in r["gaps"]], 0.99), False)
        for name in ("localllm", "llama-server"):
            per_turn = [med(c[t] for c in chats[name]) * 1e3 for t in range(10)] if chats[name] else []
            rows.append(f"| {label} | chat TTFT ms by turn ({name}) | " + " ".join(f"{x:.0f}" for x in per_turn) + " | | |")
        return rows
    finally:
        for s in servers:
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chat-repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    ap.add_argument("--prompt-words", type=int, default=300)
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--only-1b", action="store_true", help="the 1.1B model alone (it takes most of the time)")
    ap.add_argument("--draft", default="auto", choices=["auto", "prompt-lookup", "none"],
                    help="localllm's --draft (llama-server drafts nothing by default; 'none' compares the engines alone)")
    args = ap.parse_args()
    llama_server = ensure_llama_server(log=lambda m: print(m, file=sys.stderr))
    models = benchmark_models(not args.skip_1b)[1:] if args.only_1b else benchmark_models(not args.skip_1b)
    print(f"threads {args.threads}, ctx {args.ctx}, localllm --draft {args.draft}, {args.tokens} tokens per stream, "
          f"{args.repeats} interleaved runs "
          f"(medians), load average {os.getloadavg()[0]:.1f}\n")
    print("| model | metric | localllm | llama-server | localllm vs llama-server |")
    print("|---|---|---|---|---|")
    for label, path in models:
        for line in bench_model(label, path, args, llama_server):
            print(line, flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} (this machine is shared: figures under load are noisy)")


if __name__ == "__main__":
    main()
