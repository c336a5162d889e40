"""`localllm run MODEL [PROMPT]`: stream a completion, or a line REPL on a terminal."""

from __future__ import annotations

import json
import sys
import time

from localllm.config import load_settings
from localllm.errors import UserError
from localllm.types import GenerationRequest, GenerationStats, SamplingParams


def sampling_from_args(args) -> SamplingParams:
    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative (got {getattr(args, name)})")
    if args.top_p > 1 or args.min_p > 1:
        raise UserError("--top-p and --min-p must be between 0 and 1")
    if args.top_k < 0:
        raise UserError(f"--top-k must be 0 (all) or positive (got {args.top_k})")
    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        seed=args.seed,
    )


def settings_from_args(args):
    return load_settings(
        backend=args.backend, ctx_size=args.ctx_size, threads=args.threads,
        kv_type=args.kv_type, verbose=args.verbose, debug=args.debug,
    )


def load_engine(model: str, settings):
    """Load the model into an engine; return (engine, load seconds)."""
    from localllm.backend.select import load_backend
    from localllm.engine import Engine

    t0 = time.perf_counter()
    backend = load_backend(model, settings)
    return Engine(backend), time.perf_counter() - t0


def run_command(args) -> int:
    settings = settings_from_args(args)
    sampling = sampling_from_args(args)
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    engine, load_s = load_engine(args.model, settings)
    with engine:
        backend = engine.backend
        if settings.verbose:
            mem = backend.memory()
            print(
                f"loaded {args.model} on {backend.name} in {load_s:.2f} s "
                f"(weights {mem.weights_bytes / 2**20:.1f} MiB, KV cache {mem.kv_cache_bytes / 2**20:.1f} MiB, "
                f"context {backend.n_ctx}, {settings.resolved_threads} threads)",
                file=sys.stderr,
            )
        if prompt is None:
            return _repl(engine, args, sampling)
        stats = _complete(engine, args, sampling, prompt)
        _report(stats, args, settings)
    return 0


def _request(engine, args, sampling, prompt: str) -> GenerationRequest:
    backend = engine.backend
    tokens = backend.tokenize(prompt, add_bos=True) if prompt else ([backend.bos_id] if backend.bos_id is not None else [])
    max_tokens = args.max_tokens if args.max_tokens > 0 else backend.n_ctx
    return GenerationRequest(tuple(tokens), sampling, max_tokens=max_tokens, stop=tuple(args.stop))


def _complete(engine, args, sampling, prompt: str) -> GenerationStats:
    """Stream one completion to stdout. Ctrl-C cancels it and re-raises."""
    handle = engine.submit(_request(engine, args, sampling, prompt))
    out = sys.stdout
    try:
        for chunk in handle:
            if chunk.text:
                out.write(chunk.text)
                out.flush()
    except KeyboardInterrupt:
        handle.cancel()
        for _ in handle:  # let the engine thread finish the step it is on
            pass
        out.write("\n")
        out.flush()
        raise
    if not (handle.stats and handle.stats.generated_tokens == 0):
        out.write("\n")
    out.flush()
    return handle.stats


def _repl(engine, args, sampling) -> int:
    print("Type a prompt and press Enter; Ctrl-C stops a reply; Ctrl-D or /bye quits.", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /bye to quit)", file=sys.stderr)
            continue
        if line.strip() in ("/bye", "/exit", "/quit"):
            return 0
        if not line.strip():
            continue
        try:
            stats = _complete(engine, args, sampling, line)
            _report(stats, args, None)
        except KeyboardInterrupt:
            continue
        except UserError as e:
            print(f"localllm: error: {e}", file=sys.stderr)


def _report(stats: GenerationStats | None, args, settings) -> None:
    if stats is None:
        return
    if args.stats == "json":
        print(json.dumps(stats.as_dict()), file=sys.stderr)
    elif args.verbose:
        print(
            f"prompt {stats.prompt_tokens} tokens ({stats.cached_tokens} cached), "
            f"time to first token {stats.ttft_s * 1000:.1f} ms, "
            f"prefill {stats.prefill_tokens_per_s:.1f} tokens/s, "
            f"decode {stats.generated_tokens} tokens at {stats.decode_tokens_per_s:.1f} tokens/s, "
            f"peak RSS {stats.peak_rss_bytes / 2**20:.0f} MiB",
            file=sys.stderr,
        )
