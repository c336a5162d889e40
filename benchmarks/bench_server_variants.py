"""llama-server against several `localllm serve` variants at once: one setting changed per
variant (flags or environment), everything else as in bench_vs_llama_server.

All servers are loaded together and driven by one client, interleaved round by round
(order reversed every other round), medians. Per server: one stream's prefill (time to
first token) and decode tok/s, and 4 concurrent streams' aggregate tok/s and p99 gap
between deliveries, each as a ratio to llama-server's (prefill: llama-server's time over
ours). The requests are bench_vs_llama_server's.

A variant is `label=words`: words of the form NAME=VALUE are set in that server's
environment, the rest are added to its command line. Examples:

    python benchmarks/bench_server_variants.py --model smollm2 --rounds 5 \\
        --variant "defaults=" --variant "fa on=--flash-attn on" --variant "no drafts=--draft none"
    python benchmarks/bench_server_variants.py --model 1.1b --rounds 9 \\
        --variant "spin 10k=GOMP_SPINCOUNT=10000" --variant "spin 300k=GOMP_SPINCOUNT=300000"
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_llama_server as vs  # noqa: E402
from llama_server_build import ensure_llama_server  # noqa: E402
from synthetic_model import benchmark_models  # noqa: E402

ENV_WORD = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def model_path(name: str) -> Path:
    if name in ("smollm2", "1.1b"):
        return benchmark_models(name == "1.1b")[0 if name == "smollm2" else 1][1]
    return Path(name)


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    """`label=words` -> (label, environment, extra command-line arguments)."""
    label, sep, words = text.partition("=")
    if not sep or not label.strip():
        raise SystemExit(f"--variant {text!r}: expected label=words")
    env, argv = {}, []
    for word in shlex.split(words):
        if ENV_WORD.match(word):
            name, _, value = word.partition("=")
            env[name] = value
        else:
            argv.append(word)
    return label.strip(), env, argv


def start_servers(path: Path, variants: list[tuple[str, dict, list]], args) -> list[vs.Server]:
    llama_server = ensure_llama_server(log=lambda m: print(m, file=sys.stderr))
    port = vs._free_port()
    servers = [vs.Server("llama-server", [str(llama_server), "-m", str(path), "-t", str(args.threads),
                                          "-c", str(4 * args.ctx), "--parallel", "4", "--port", str(port),
                                          "--host", "127.0.0.1", "--no-webui", *vs.same_weight_layout()], port,
                               env=vs.USER_ENV)]
    for label, extra_env, extra_argv in variants:
        home = tempfile.mkdtemp(prefix="bench-localllm-")
        env = dict(vs.USER_ENV, LOCALLLM_HOME=home, LOCALLLM_CONFIG=os.path.join(home, "config.toml"), **extra_env)
        port = vs._free_port()
        servers.append(vs.Server(label, [sys.executable, "-m", "localllm", "serve", "--model", str(path), "--threads",
                                         str(args.threads), "--ctx-size", str(args.ctx), "--parallel", "4", "--port",
                                         str(port), *extra_argv], port, env=env))
    return servers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, 1.1b or a GGUF path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variant", action="append", default=[], help="label=words (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in (args.variant or ["defaults="])]
    path = model_path(args.model)
    bias = vs.eos_bias(path)
    servers = start_servers(path, variants, args)
    try:
        one = {s.name: [] for s in servers}
        four = {s.name: [] for s in servers}
        for s in servers:
            vs.one_stream(s, -1, bias, 8, 20)  # warm up
        for rnd in range(args.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]
            for s in order:
                one[s.name].append(vs.one_stream(s, rnd, bias, args.tokens, 300))
            for s in order:
                four[s.name].append(vs.concurrent_streams(s, rnd, bias, args.tokens))
        med = statistics.median

        def figures(name):
            gaps = [g for r in four[name] for g in r["gaps"]]
            return (med(r["ttft"] for r in one[name]), med(r["decode"] for r in one[name]),
                    med(r["aggregate"] for r in four[name]), 1e3 * vs._pct(gaps, 0.99))

        b_ttft, b_dec, b_agg, b_p99 = figures("llama-server")
        print(f"{path.name}, {args.threads} threads, {args.rounds} interleaved rounds (medians), "
              f"load average {os.getloadavg()[0]:.1f}\n")
        print("| server | prefill vs llama-server | decode tok/s | vs llama-server | 4 streams tok/s | vs llama-server "
              "| 4 streams gap p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for s in servers:
            ttft, dec, agg, p99 = figures(s.name)
            print(f"| {s.name} | {b_ttft / ttft:.3f}x | {dec:.1f} | {dec / b_dec:.3f}x | {agg:.1f} | {agg / b_agg:.3f}x "
                  f"| {p99:.0f} |", flush=True)
    finally:
        for s in servers:
            s.close()


if __name__ == "__main__":
    main()
