"""llama.cpp's KV layouts for several sequences, side by side: one unified buffer (what the
CPU backend uses) or one stream per sequence (`kv_unified` off, as llama-server's slots
with an explicit --parallel), each with flash attention on and off.

For each layout and depth it reports:
- batch invariance of decoding: the largest difference between a sequence's logits
  decoded alone and decoded in one batch with three others (greedy, `--steps` tokens
  after a prompt of `depth` tokens, each prompt prefilled in a pass of its own; the others
  are prefilled first, so in a unified buffer the sequence's cells sit after theirs).
  0 means bit-identical. It does not cover what the engine adds (prompts of several
  sequences in one pass, prefixes copied between caches, drafts). With flash attention
  off llama.cpp computes a sequence's attention with ggml's dot products when a
  micro-batch holds one token of it and with llamafile's sgemm when it holds several
  (sgemm declines single rows), which round differently: the same token's logits fed
  alone or in a pass with others of its sequence were equal for most SmolLM2 prompts
  (300 tokens as 299+1) and up to 0.76 apart for others (7, 10, 12, 15 ... of one 41-token
  prompt), while passes of 2, 3 or all tokens always agreed. So a draft (several tokens
  where plain decoding feeds one), and llama.cpp's split of a prompt chunk beside other
  sequences' tokens (one token in the shared micro-batch), change a reply: 1-2 of 4
  concurrent replies parted with `--draft auto`, whose policy drafts differently alone and
  in a batch. The backend now gives such items passes of their own, and with prompt lookup
  (same drafts alone and batched) the 4 replies matched; flash attention stays on with
  drafting (attention_calibration). With it on, 299+1 gave 0.55 (the last token decoded by
  the split-KV kernel);
- decode tokens/s for one sequence and aggregate tokens/s for four decoding together, at
  `depth` cached tokens each (fastest of `--rounds` interleaved rounds: other work on the
  machine only adds time).

It drives llama.cpp directly (no engine), so it measures the layouts, not our code. The
models are the shared SmolLM2-135M Q4_1 and stories260K, and the 1.1B benchmark model of
`benchmarks/synthetic_model.py` (`--model 1.1b`).

First run (2-core dev VM, SmolLM2, 2 threads, 3 rounds, load ~1.9; tok/s 1 seq / 4 seqs):

| layout | 100 cached | 400 cached | 1,500 cached | max diff alone vs batch (100 / 400 / 1,500) |
|---|---|---|---|---|
| unified, FA on | 80 / 129 | 56 / 85 | 29 / 33 | 0.78 / 0.84 / 16.9 |
| unified, FA off | 83 / 141 | 71 / 112 | 54 / 58 | 0.93 / 0.96 / 0.78 |
| streams, FA on | 79 / 136 | 56 / 88 | 30 / 36 | 0 / 0.96 / 0.87 |
| streams, FA off | 79 / 137 | 72 / 126 | 52 / 80 | 0 / 0 / 0 |

    python benchmarks/bench_kv_streams.py [--depths 100,400,1500] [--model smollm2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

SHARED_MODELS = Path(os.environ.get("LOCALLLM_TEST_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"))
MODELS = {
    "stories260K": SHARED_MODELS / "stories260K" / "stories260K.gguf",
    "smollm2": SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf",
}
LAYOUTS = {  # name: (kv_unified, flash attention)
    "unified, FA on": (True, True),
    "unified, FA off": (True, False),
    "streams, FA on": (False, True),
    "streams, FA off": (False, False),
}
SEQS = 4
CHUNK = 256


class Runner:
    """One llama.cpp context of SEQS sequences in one layout."""

    def __init__(self, L, model, n_vocab: int, unified: bool, flash_attn: bool, per_seq: int, threads: int):
        self.L, self.n_vocab = L, n_vocab
        cp = L.llama_context_default_params()
        cp.n_ctx = per_seq * SEQS
        cp.n_batch = cp.n_ubatch = 512
        cp.n_seq_max = SEQS
        cp.kv_unified = unified
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(512, 0, 1)

    def decode(self, items: list[tuple[int, int, list[int]]]) -> list[np.ndarray]:
        """items: (sequence, first position, tokens), in ascending sequence order (a
        per-sequence-stream context takes consecutive sequences in one micro-batch);
        returns each item's last logits row."""
        b, n = self.batch, 0
        for seq, pos0, tokens in items:
            for j, t in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = t, pos0 + j, 1
                b.seq_id[n][0] = seq
                b.logits[n] = j == len(tokens) - 1
                n += 1
        b.n_tokens = n
        if self.L.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        rows, k = [], 0
        for _, _, tokens in items:
            k += len(tokens)
            rows.append(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, k - 1), shape=(self.n_vocab,)).copy())
        return rows

    def prefill(self, seq: int, tokens: list[int]) -> np.ndarray:
        for lo in range(0, len(tokens), CHUNK):
            row = self.decode([(seq, lo, tokens[lo:lo + CHUNK])])[0]
        return row

    def greedy(self, prompts: dict[int, list[int]], steps: int) -> list[np.ndarray]:
        """Sequence 0's logits over `steps` greedy tokens, decoding every sequence in
        `prompts` together (prefilled in the order given, sequence 0 last)."""
        self.L.llama_memory_clear(self.mem, True)
        last = {seq: self.prefill(seq, tokens) for seq, tokens in prompts.items()}
        pos = {seq: len(tokens) for seq, tokens in prompts.items()}
        rows = [last[0]]
        for _ in range(steps):
            items = [(seq, pos[seq], [int(last[seq].argmax())]) for seq in sorted(prompts)]
            for (seq, _, _), row in zip(items, self.decode(items)):
                last[seq], pos[seq] = row, pos[seq] + 1
            rows.append(last[0])
        return rows

    def fill(self, n_seqs: int, depth: int, prompt) -> None:
        self.L.llama_memory_clear(self.mem, True)
        for seq in range(n_seqs):
            self.prefill(seq, prompt(100 + seq, depth))

    def decode_rate(self, n_seqs: int, depth: int, steps: int) -> float:
        """Aggregate tokens/s of `steps` steps at `depth` (after `fill`); the decoded
        tokens are removed again so the next round starts at the same depth."""
        t = time.perf_counter()
        for k in range(steps):
            self.decode([(seq, depth + k, [7 + seq]) for seq in range(n_seqs)])
        rate = n_seqs * steps / (time.perf_counter() - t)
        for seq in range(n_seqs):
            self.L.llama_memory_seq_rm(self.mem, seq, depth, -1)
        return rate

    def close(self) -> None:
        self.L.llama_batch_free(self.batch)
        self.L.llama_free(self.ctx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="stories260K, smollm2, 1.1b or a GGUF path (repeatable)")
    ap.add_argument("--depths", default="100,400,1500")
    ap.add_argument("--steps", type=int, default=24, help="greedy steps compared for invariance")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]

    import llama_cpp as L

    from localllm.cpu_backend import llama_log, llamacpp  # OpenMP settings as the backend's, AMX_BUILD

    log = llama_log.install(verbose=False)  # noqa: F841  (kept alive: llama.cpp calls it)

    models = dict(MODELS)
    chosen = args.model or ["smollm2"]
    if "1.1b" in chosen:  # built once (a few minutes) and cached in the user cache
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from synthetic_model import cached_model

        models["1.1b"] = cached_model()
    mparams = L.llama_model_default_params()
    mparams.use_extra_bufts = not llamacpp.AMX_BUILD
    print(f"threads {args.threads}, depths {depths}, {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    print("| model | layout | depth | max abs(alone - in batch of 4) | 1 sequence tok/s | 4 sequences tok/s |")
    print("|---|---|---|---|---|---|")
    for name in chosen:
        path = Path(models.get(name, name))
        model = L.llama_model_load_from_file(str(path).encode(), mparams)
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))

        def prompt(seed: int, n: int) -> list[int]:
            return [int(t) for t in np.random.default_rng(seed).integers(100, n_vocab - 100, n)]

        per_seq = max(depths) + max(args.steps, args.decode_steps) + 256
        runners = {lay: Runner(L, model, n_vocab, *LAYOUTS[lay], per_seq, args.threads) for lay in LAYOUTS}
        for depth in depths:
            others = {1: prompt(1, depth + 37), 2: prompt(2, max(1, depth // 2)), 3: prompt(3, depth + 200)}
            rates = {lay: {1: [], SEQS: []} for lay in LAYOUTS}
            diffs = {}
            for lay, r in runners.items():
                alone = r.greedy({0: prompt(0, depth)}, args.steps)
                together = r.greedy({**others, 0: prompt(0, depth)}, args.steps)
                diffs[lay] = max(float(np.abs(a - b).max()) for a, b in zip(alone, together))
            for n_seqs in (1, SEQS):
                for lay, r in runners.items():
                    r.fill(n_seqs, depth, prompt)
                for round_ in range(args.rounds):
                    order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
                    for lay in order:
                        rates[lay][n_seqs].append(runners[lay].decode_rate(n_seqs, depth, args.decode_steps))
            for lay in LAYOUTS:
                print(f"| {name} | {lay} | {depth} | {diffs[lay]:.3g} | {max(rates[lay][1]):.1f} | "
                      f"{max(rates[lay][SEQS]):.1f} |", flush=True)
        for r in runners.values():
            r.close()
        L.llama_model_free(model)


if __name__ == "__main__":
    main()
