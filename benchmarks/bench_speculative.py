"""Prompt-lookup speculative decoding versus plain decoding, greedy, and llama-cpp-python's
`LlamaPromptLookupDecoding` beside it.

Two tables:
1. Forward-pass cost: what a forward of n tokens (all logits) costs against 1 token, on
   SmolLM2-135M Q4_1 and the 1.1B benchmark model (random weights, Q4_K_M, built by
   synthetic_model.py and cached): the figure that decides whether verifying k drafted
   tokens can pay on this machine. Sizes interleaved, medians.
2. Tasks on SmolLM2 (chat template, greedy), then two on stories260K: input-grounded ones (repeat a paragraph,
   rename in code and output all of it, answer by quoting a passage) and free ones (a
   story, an open question). Per task, decode tokens/s of ours with --draft none,
   prompt-lookup and auto, and of llama-cpp-python plain and with prompt lookup; runs
   interleaved (the order rotates each repeat), medians; "same" says whether the text
   equals our plain decoding's.

Everything runs with one llama.cpp thread by default: on a machine that others share,
two threads wait on each other at every barrier and the timings mean nothing.

    python benchmarks/bench_speculative.py [--repeats 3] [--max-tokens 128] [--threads 1]
        [--skip-1b] [--skip-llama-cpp-python] [--models smollm,stories] [--tasks "quote passage,story"]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import LLAMA_1B, SHARED_MODELS, cached_model  # noqa: E402

from localllm.config import Settings  # noqa: E402
from localllm.types import DraftParams, Message, SamplingParams  # noqa: E402

SMOLLM = SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
STORIES = SHARED_MODELS / "stories260K" / "stories260K.gguf"
DRAFT_MAX, NGRAM = 8, 3

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every night its "
    "keeper climbed the narrow stairs, wound the clockwork and lit the lamp, so that the fishing boats "
    "could find their way home through the fog. When the keeper grew old, his daughter took over the work."
)
CODE = (
    "def total_price(items, tax_rate):\n"
    "    subtotal = 0\n"
    "    for item in items:\n"
    "        subtotal += item.price * item.quantity\n"
    "    tax = subtotal * tax_rate\n"
    "    return subtotal + tax\n"
    "\n"
    "def average_price(items):\n"
    "    subtotal = 0\n"
    "    for item in items:\n"
    "        subtotal += item.price\n"
    "    return subtotal / len(items)\n"
)
PASSAGE = (
    "Honey bees communicate through a series of movements called the waggle dance. A forager that has "
    "found flowers returns to the hive and walks in a figure of eight. The angle of the straight run "
    "tells the other bees the direction of the food relative to the sun, and the length of the run "
    "tells them how far away it is."
)
# A three-paragraph document to answer from by quoting: one-shot on `DOCUMENT_EXAMPLE`
# (the fox question answered with the fox paragraph), then the bee question on `DOCUMENT`.
FOX = (
    "Red foxes live on every continent of the northern hemisphere. They hunt mostly at night and eat "
    "small rodents, birds and fruit. In winter a fox can hear a mouse moving under a metre of snow, "
    "and it catches it by jumping high and diving head first into the snow."
)
OWL = (
    "Owls can turn their heads about three quarters of the way around. Their eyes cannot move in their "
    "sockets, so the whole head turns instead. Special blood vessels in the neck keep the brain supplied "
    "with blood while the head is twisted."
)
BEES = (
    "Honey bees communicate through a series of movements called the waggle dance. A forager that has "
    "found flowers returns to the hive and walks in a figure of eight on the honeycomb. The angle of the "
    "straight run tells the other bees the direction of the food relative to the sun, and the length of the "
    "run tells them how far away it is. The other bees follow the dancer closely, then fly out to the flowers "
    "on their own."
)
DOCUMENT_EXAMPLE = f"{OWL}\n\n{PARAGRAPH}\n\n{FOX}"
DOCUMENT = f"{PARAGRAPH}\n\n{BEES}\n\n{FOX}"
GREET = (
    "def greet(name):\n"
    "    message = \"Hello, \" + name + \"!\"\n"
    "    print(message)\n"
    "    return message\n"
    "\n"
    "def farewell(name):\n"
    "    message = \"Goodbye, \" + name + \"!\"\n"
    "    print(message)\n"
    "    return message\n"
)
AREA = "def area(width, height):\n    size = width * height\n    return size\n"


def rename_request(old: str, new: str, code: str) -> str:
    return f"Rename `{old}` to `{new}` in this code and output all of the code.\n\n```python\n{code}```"


def quote_request(document: str, question: str) -> str:
    return (f"Document:\n\n{document}\n\nQuestion: {question}\n"
            "Answer by quoting the paragraph of the document that answers it, word for word.")


# SmolLM2-135M does not do every grounded task it is asked: given `CODE` and asked to
# rename, it rewrites the functions (a test of nothing); given a passage and asked a
# question, it paraphrases, even when asked to quote the sentence that answers it (it
# opens with its own words and copies only some of the sentence). The grounded prompts
# below are ones it really follows (checked by reading its replies with --show): a rename
# shown once on a small example (one-shot), then asked on shorter code; a question about a
# three-paragraph document answered by quoting the paragraph that answers it, shown once
# on another document (it quotes the bee paragraph, dropping only "Honey" and the "of" of
# "figure of eight"). The prompts it does not follow stay in the table, labelled so.
TASKS = [
    ("repeat paragraph", "grounded", f"Repeat the following paragraph exactly, word for word:\n\n{PARAGRAPH}"),
    ("rename in code", "grounded", [
        Message("user", rename_request("size", "result", AREA)),
        Message("assistant", f"```python\n{AREA.replace('size', 'result')}```"),
        Message("user", rename_request("message", "text", GREET))]),
    ("rename (ungrounded)", "grounded",
     f"Rename the variable subtotal to net_total in this code. Output the whole code and nothing else.\n\n{CODE}"),
    ("quote passage", "grounded", [
        Message("user", quote_request(DOCUMENT_EXAMPLE, "How does a fox catch a mouse in winter?")),
        Message("assistant", FOX),
        Message("user", quote_request(DOCUMENT, "How do bees tell each other where food is?"))]),
    ("quote (paraphrased)", "grounded",
     f"Read this passage:\n\n{PASSAGE}\n\nWhich sentence of the passage explains the direction and the "
     "distance of the food? Quote it exactly."),
    ("story", "free", "Write a short story about a dragon who learns to bake bread."),
    ("open question", "free", "Why do people enjoy listening to music? Give a few reasons."),
]

STORY_TASKS = [
    ("story", "free", "Once upon a time"),
    ("repetitive story", "grounded",
     "Tim had a red ball. He liked to play with his red ball. One day, Tim lost his red ball. Tim"),
]


FLASH_ATTN = "auto"  # --flash-attn: what the runs below load models with


def settings(threads: int, ctx: int = 2048) -> Settings:
    home = Path("/tmp/localllm-bench-speculative")
    # One request at a time, as `run` and `chat` serve them (auto drafts only outside a shared batch).
    return Settings(home=home, cache_dir=home / "cache", ctx_size=ctx, threads=threads, prefix_cache=False,
                    parallel=1, flash_attn=FLASH_ATTN)


# -- forward cost -------------------------------------------------------------------------

def forward_costs(path: Path, threads: int, sizes=(1, 2, 3, 5, 9), repeats: int = 7) -> dict[int, float]:
    from localllm.backend.select import load_backend

    backend = load_backend(str(path), settings(threads, ctx=1024))
    try:
        vocab = backend.vocabulary
        prompt = vocab.encode(PARAGRAPH * 2, add_bos=True)[:200]
        cache = backend.new_cache()
        backend.forward(prompt, cache)
        seconds: dict[int, list[float]] = {n: [] for n in sizes}
        for r in range(repeats):
            for n in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                t = time.perf_counter()
                logits = backend.forward(prompt[10:10 + n], cache, all_logits=True)
                logits.argmax()
                seconds[n].append(time.perf_counter() - t)
                backend.trim(cache, len(prompt))
        cache.close()
        return {n: statistics.median(v) for n, v in seconds.items()}
    finally:
        backend.close()


# -- tasks --------------------------------------------------------------------------------

class Ours:
    def __init__(self, path: Path, threads: int):
        from localllm.runtime import load_model

        self.model = load_model(str(path), settings(threads))
        # Count verifications (for accepted tokens per verification) where every mode's
        # outcomes arrive: the model's adaptive policy (--draft prompt-lookup reports there too).
        learner = self.model.engine.draft_policy
        record = learner.record_verification
        self.verifications = 0

        def counted(match_length: int, k: int, accepted: int) -> None:
            self.verifications += 1
            record(match_length, k, accepted)

        learner.record_verification = counted

    def prompt(self, text, chat: bool) -> list[int]:
        if not chat:
            return self.model.text_tokens(text)
        return self.model.chat_tokens(text if isinstance(text, list) else [Message("user", text)])

    def run(self, tokens: list[int], mode: str, max_tokens: int):
        request = self.model.request(tokens, SamplingParams(temperature=0), max_tokens,
                                     draft=DraftParams(mode, DRAFT_MAX, NGRAM))
        before = self.verifications
        handle = self.model.submit(request)
        out = handle.text()
        s = handle.stats
        return out, s.decode_tokens_per_s, s.generated_tokens, (s.accepted_tokens, s.draft_tokens, self.verifications - before)


def llama_cpp_python_worker(path: str, threads: int, prompt_lookup: bool, max_tokens: int) -> None:
    """Runs in a child process (`--lcpp-worker`): llama-cpp-python's high-level Llama, plain
    or with LlamaPromptLookupDecoding, on the prompt token ids read from stdin (our chat
    template's: the same prompt as ours); prints one JSON line. A child, in case a
    build's high-level Llama crashes (SIGSEGV in llama_decode) on some models."""
    import llama_cpp.llama_cpp as low_level
    from llama_cpp import Llama
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    if b"AMX_INT8 = 1" in low_level.llama_print_system_info():  # as cpu_backend.llamacpp.AMX_BUILD
        # Llama has no argument for it, so give it the setting our backend uses on such a
        # build (see cpu_backend/llamacpp.py: AMX weight buffers crash on batches of 2+
        # tokens): its constructor fills its model params from this function.
        default_params = low_level.llama_model_default_params

        def plain_cpu_buffers():
            params = default_params()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = plain_cpu_buffers
    request = json.loads(sys.stdin.read())
    draft = LlamaPromptLookupDecoding(num_pred_tokens=DRAFT_MAX, max_ngram_size=NGRAM) if prompt_lookup else None
    llm = Llama(path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                n_gpu_layers=0, verbose=False, draft_model=draft)
    stop_ids = set(request["stop_ids"]) | {llm.token_eos()}
    out, t_first, t_last = [], 0.0, 0.0
    for token in llm.generate(request["tokens"], top_k=1, temp=0.0):
        now = time.perf_counter()
        if token in stop_ids:
            break
        out.append(token)
        if len(out) == 1:
            t_first = now
        t_last = now
        if len(out) >= max_tokens:
            break
    rate = (len(out) - 1) / (t_last - t_first) if len(out) > 1 and t_last > t_first else 0.0
    print(json.dumps({"tokens": out, "rate": rate}))


class LlamaCppPython:
    def __init__(self, path: Path, threads: int, prompt_lookup: bool, stop_ids, detokenize):
        self.args = [sys.executable, __file__, "--lcpp-worker", str(path), str(threads), str(int(prompt_lookup))]
        self.stop_ids, self.detokenize = list(stop_ids), detokenize

    def run(self, tokens: list[int], max_tokens: int):
        r = subprocess.run(self.args + [str(max_tokens)], input=json.dumps({"tokens": tokens, "stop_ids": self.stop_ids}),
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"    llama-cpp-python worker exited with {r.returncode}: {r.stderr.strip()[-200:]}", file=sys.stderr)
            return None  # crashed: shown as such
        result = json.loads(r.stdout.strip().splitlines()[-1])
        return self.detokenize(result["tokens"]), result["rate"], len(result["tokens"]), None


def run_tasks(path: Path, tasks, chat: bool, args) -> list[dict]:
    ours = Ours(path, args.threads)
    names = ["none", "prompt-lookup", "auto"]
    lcpp = {}
    if not args.skip_llama_cpp_python:
        stop_ids = ours.model.prompter.stop_token_ids if chat else ()
        vocab = ours.model.tokenizer

        def detokenize(ids):
            return b"".join(vocab.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

        lcpp = {"lcpp plain": LlamaCppPython(path, args.threads, False, stop_ids, detokenize),
                "lcpp lookup": LlamaCppPython(path, args.threads, True, stop_ids, detokenize)}
    names += list(lcpp)
    rows = []
    wanted = [t for t in args.tasks.split(",") if t]
    for name, kind, text in tasks:
        if wanted and name not in wanted:
            continue
        results: dict[str, list] = {n: [] for n in names}
        tokens = ours.prompt(text, chat)
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for side in order:
                if side in lcpp:
                    results[side].append(lcpp[side].run(tokens, args.max_tokens))
                else:
                    results[side].append(ours.run(tokens, side, args.max_tokens))
        plain_text = results["none"][0][0]
        row = {"task": name, "kind": kind, "tokens": results["none"][0][2]}
        for side in names:
            done = [x for x in results[side] if x is not None]
            if not done:
                row[side] = None
                continue
            row[side] = statistics.median(x[1] for x in done)
            # llama-cpp-python's text is compared by tokens turned to text our way (its
            # detokenizer strips differently); ours by the streamed text.
            row[side + " same"] = all(x[0].strip() == plain_text.strip() for x in done)
            acc = [x[3] for x in done if x[3] is not None]
            if acc:
                row[side + " acceptance"] = sum(a for a, _, _ in acc) / max(1, sum(d for _, d, _ in acc))
                row[side + " per verification"] = sum(a for a, _, _ in acc) / max(1, sum(v for _, _, v in acc))
        rows.append(row)
        print_row(row, names, header=len(rows) == 1)
        if args.show:
            print("    plain reply: " + plain_text[:400].replace("\n", "\n    "), flush=True)
    ours.model.close()
    return rows


def print_row(row: dict, names: list[str], header: bool) -> None:
    if header:
        print(f"\n{'task':<20}{'kind':<9}{'tok':>4}  " + "".join(f"{n:>28}" for n in names))
    cells = []
    plain = row["none"] or 1.0
    for n in names:
        if row[n] is None:
            cells.append("crashed")
            continue
        same = "=" if row[n + " same"] else "≠"
        acc = ""
        if n + " acceptance" in row and n != "none":
            acc = f" {row[n + ' acceptance']:.0%} {row[n + ' per verification']:.1f}"
        cells.append(f"{row[n]:7.1f} {row[n] / plain:5.2f}x {same}{acc:>9}")
    print(f"{row['task']:<20}{row['kind']:<9}{row['tokens']:>4}  " + "".join(f"{c:>28}" for c in cells), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flash-attn", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp flash attention for our runs (auto: as `run` chooses it)")
    ap.add_argument("--show", action="store_true", help="print each task's plain reply (is it grounded?)")
    ap.add_argument("--skip-1b", action="store_true")
    ap.add_argument("--models", default="smollm,stories", help="whose task table to run: smollm, stories or both")
    ap.add_argument("--tasks", default="", help="comma-separated task names to run (default: all)")
    ap.add_argument("--skip-llama-cpp-python", action="store_true")
    ap.add_argument("--lcpp-worker", nargs=4, metavar=("MODEL", "THREADS", "LOOKUP", "MAX"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lcpp_worker:
        path, threads, lookup, most = args.lcpp_worker
        llama_cpp_python_worker(path, int(threads), lookup == "1", int(most))
        return

    global FLASH_ATTN
    FLASH_ATTN = args.flash_attn
    print(f"forward of n tokens against 1 token (all logits; medians; {args.threads} thread(s))")
    models = [("stories260K F32", STORIES), ("SmolLM2-135M Q4_1", SMOLLM)]
    if not args.skip_1b:
        models.append(("llama 1.1B Q4_K_M", cached_model(LLAMA_1B, "Q4_K_M")))
    for label, path in models:
        costs = forward_costs(path, args.threads)
        c1 = costs[1]
        print(f"  {label:<20} 1 token {c1 * 1000:7.1f} ms   " +
              "   ".join(f"{n}: {c / c1:4.2f}x" for n, c in costs.items() if n > 1), flush=True)

    legend = (f"up to {args.max_tokens} tokens, median of {args.repeats}; ratio to ours with --draft none; "
              "'=' same text as ours plain; % drafted tokens accepted, accepted tokens per verification")
    if "smollm" in args.models:
        print(f"\ndecode tokens/s, greedy, SmolLM2-135M Q4_1 (chat template), {legend}")
        run_tasks(SMOLLM, TASKS, True, args)
    if "stories" in args.models:
        print(f"\ndecode tokens/s, greedy, stories260K (continuation), {legend}")
        run_tasks(STORIES, STORY_TASKS, False, args)


if __name__ == "__main__":
    main()
