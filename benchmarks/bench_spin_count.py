"""How long llama.cpp's OpenMP threads should spin at a barrier before they sleep, measured
where it matters: `localllm serve` against llama-server over HTTP.

One llama-server (its defaults, as in bench_vs_llama_server) and one `localllm serve` per
`GOMP_SPINCOUNT` value ("default" = what localllm sets by itself, cpu_backend/__init__.py),
all loaded at once and driven by one client, interleaved round by round, medians. Per
server: one stream's decode tok/s and prefill (time to first token), or with `--multi`
the aggregate tok/s of 4 concurrent streams. The requests are bench_vs_llama_server's.

    python benchmarks/bench_spin_count.py [--model smollm2|1.1b|PATH] [--rounds 9]
        [--spins default,10000,300000] [--multi] [--draft none]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_vs_llama_server as vs  # noqa: E402
from llama_server_build import ensure_llama_server  # noqa: E402
from synthetic_model import benchmark_models  # noqa: E402


def model_path(name: str) -> Path:
    if name in ("smollm2", "1.1b"):
        return benchmark_models(name == "1.1b")[0 if name == "smollm2" else 1][1]
    return Path(name)


def start_servers(path: Path, spins: list[str], args) -> list[vs.Server]:
    llama_server = ensure_llama_server(log=lambda m: print(m, file=sys.stderr))
    port = vs._free_port()
    servers = [vs.Server("llama-server", [str(llama_server), "-m", str(path), "-t", str(args.threads),
                                          "-c", str(4 * args.ctx), "--parallel", "4", "--port", str(port),
                                          "--host", "127.0.0.1", "--no-webui", "--no-repack"], port, env=vs.USER_ENV)]
    for spin in spins:
        home = tempfile.mkdtemp(prefix="bench-localllm-")
        env = dict(vs.USER_ENV, LOCALLLM_HOME=home, LOCALLLM_CONFIG=os.path.join(home, "config.toml"))
        if spin != "default":
            env["GOMP_SPINCOUNT"] = spin
        port = vs._free_port()
        servers.append(vs.Server(f"localllm, spin {spin}",
                                 [sys.executable, "-m", "localllm", "serve", "--model", str(path), "--threads",
                                  str(args.threads), "--ctx-size", str(args.ctx), "--parallel", "4", "--port",
                                  str(port), "--draft", args.draft], port, env=env))
    return servers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, 1.1b or a GGUF path")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--spins", default="default,10000,300000")
    ap.add_argument("--multi", action="store_true", help="4 concurrent streams' aggregate instead of one stream")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--draft", default="none", choices=["auto", "prompt-lookup", "none"])
    args = ap.parse_args()
    path = model_path(args.model)
    bias = vs.eos_bias(path)
    servers = start_servers(path, args.spins.split(","), args)
    try:
        results: dict[str, list[dict]] = {s.name: [] for s in servers}
        for s in servers:
            vs.one_stream(s, -1, bias, 8, 20)  # warm up
        for rnd in range(args.rounds):
            for s in servers if rnd % 2 == 0 else servers[::-1]:
                if args.multi:
                    results[s.name].append({"tok/s": vs.concurrent_streams(s, rnd, bias, args.tokens)["aggregate"]})
                else:
                    r = vs.one_stream(s, rnd, bias, args.tokens, 300)
                    results[s.name].append({"tok/s": r["decode"], "ttft": r["ttft"]})
        med = statistics.median
        base = results["llama-server"]
        what = "4 streams aggregate" if args.multi else "1 stream decode"
        print(f"{path.name}, {args.threads} threads, localllm --draft {args.draft}, {args.rounds} interleaved rounds "
              f"(medians), load average {os.getloadavg()[0]:.1f}\n")
        print(f"| server | {what} tok/s | vs llama-server |" + ("" if args.multi else " prefill vs llama-server |"))
        print("|---|---|---|" + ("" if args.multi else "---|"))
        for name, rows in results.items():
            speed = med(r["tok/s"] for r in rows)
            line = f"| {name} | {speed:.2f} | {speed / med(r['tok/s'] for r in base):.3f}x |"
            if not args.multi:
                line += f" {med(r['ttft'] for r in base) / med(r['ttft'] for r in rows):.3f}x |"
            print(line, flush=True)
    finally:
        for s in servers:
            s.close()


if __name__ == "__main__":
    main()
