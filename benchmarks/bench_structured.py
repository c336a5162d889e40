"""Decode speed with and without an output constraint (a JSON schema), on SmolLM2 and the
1.1B benchmark model (random weights, Llama 2 vocabulary, Q4_K_M), through the engine.

Greedy decoding checks the model's argmax against the grammar first (one token, no
mask); sampling computes the whole mask every step. Both are measured. The schema keeps
the reply going for the whole `--tokens` (an array of at least 64 short strings), so
every run generates the same number of tokens; runs alternate constrained and not, and
the table shows medians. Issue #15's budget: the constraint costs at most 10% of decode
time on SmolLM2.

    python benchmarks/bench_structured.py [--repeats 5] [--tokens 96] [--skip-1b]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import SHARED_MODELS, cached_model  # noqa: E402

from localllm.backend.select import load_backend  # noqa: E402
from localllm.config import Settings, physical_cores  # noqa: E402
from localllm.engine import Engine  # noqa: E402
from localllm.engine.constraint import compiler_for  # noqa: E402
from localllm.tokenizer.chat import ChatPrompter  # noqa: E402
from localllm.types import GenerationRequest, Message, OutputConstraint, SamplingParams  # noqa: E402

SCHEMA = {"type": "object", "properties": {"words": {"type": "array", "minItems": 64,
                                                     "items": {"type": "string", "maxLength": 12}}},
          "required": ["words"], "additionalProperties": False}


def decode_rate(engine: Engine, prompt: tuple[int, ...], tokens: int, sampling: SamplingParams,
                constraint: OutputConstraint | None) -> float:
    handle = engine.submit(GenerationRequest(prompt, sampling, max_tokens=tokens, constraint=constraint,
                                             ignore_eos=constraint is None))
    handle.text()
    assert handle.stats.generated_tokens == tokens, (handle.finish_reason, handle.stats.generated_tokens)
    return handle.stats.decode_tokens_per_s


def bench(name: str, path: Path, args) -> list[str]:
    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=1024,
                        threads=args.threads)
    rows = []
    with Engine(load_backend(str(path), settings)) as engine:
        vocab = engine.backend.vocabulary
        template = vocab.chat_template
        messages = [Message("user", "List some words as JSON.")]
        prompt = tuple(ChatPrompter(vocab, template).encode(messages) if template else vocab.encode("Words:"))
        constraint = OutputConstraint("json_schema", json.dumps(SCHEMA))
        compiler_for(vocab).matcher(constraint)  # the one-time token trie, outside the timings
        for mode, sampling in (("greedy", SamplingParams(temperature=0)),
                               ("sampled", SamplingParams(temperature=1.0, seed=1))):
            decode_rate(engine, prompt, 8, sampling, constraint)  # warm-up
            free, constrained = [], []
            for _ in range(args.repeats):
                free.append(decode_rate(engine, prompt, args.tokens, sampling, None))
                constrained.append(decode_rate(engine, prompt, args.tokens, sampling, constraint))
            f, c = statistics.median(free), statistics.median(constrained)
            rows.append(f"| {name} | {mode} | {f:.1f} | {c:.1f} | {c / f:.3f} | {(f / c - 1) * 100:+.1f}% |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--skip-1b", action="store_true")
    args = ap.parse_args()
    models = [("SmolLM2-135M Q4_1", SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    if not args.skip_1b:
        models.append(("random 1.1B Q4_K_M", cached_model()))
    print(f"decode tokens/s, {args.tokens} tokens, median of {args.repeats} interleaved runs, {args.threads} threads")
    print("| model | decoding | no constraint | JSON schema | ratio | time per token |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, path in models:
        for row in bench(name, path, args):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
