"""Time to first token of turn 10 of a chat with ~1,500 tokens of history: KV cache on
versus off, side by side in one run (issue #3 target: at most 0.1x with the cache).

Both runs play the same scripted conversation (greedy, so the same replies) through the
full runtime (`load_model` -> `LoadedModel.chat`). With the cache, turn 10 prefills only
its new tokens; without it, the whole history.

    python benchmarks/bench_kvcache.py [--skip-1b]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_model import SHARED_MODELS, cached_model  # noqa: E402

from localllm.config import Settings  # noqa: E402
from localllm.runtime import load_model  # noqa: E402
from localllm.types import Message, SamplingParams  # noqa: E402

SENTENCES = [
    "Lily went to the park with her mom and saw a big red ball near the old tree by the pond.",
    "Tom the dog ran after the ball, barking loudly, and all the children laughed at him.",
    "The sun was warm, the birds sang in the trees, and everyone was very happy that day.",
]


# Llama 2's chat format, for models without a template of their own: replies are followed
# by </s>, as in a real chat model's conversation.
# The reply goes in as the model wrote it (no space added before it): stories260K does not
# start replies with a space, so Llama 2's " {{ content }}" would re-tokenize every
# reply differently from what the model generated, and the cache could not reuse it.
LLAMA2_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ bos_token }}[INST] <<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}{% if not loop.first and not loop.previtem['role'] == 'system' %}{{ bos_token }}[INST] {% endif %}"
    "{{ m['content'] }} [/INST]{% else %}{{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


def play(path: Path, prefix_cache: bool, template: str | None, turns: int = 10, reply_tokens: int = 120) -> list:
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), cache_dir=Path(home) / "cache", ctx_size=2048,
                            prefix_cache=prefix_cache, snapshot_cap_mb=0)
        model = load_model(str(path), settings, chat_template=template)
        messages = [Message("system", "You tell short stories about a girl and her dog.")]
        results = []
        try:
            for turn in range(turns):
                # A sentence from the user, a longer reply: ~1,500 tokens of history by turn 10.
                messages.append(Message("user", SENTENCES[turn % 3]))
                handle = model.chat(messages, SamplingParams(temperature=0), max_tokens=reply_tokens)
                reply = handle.text()
                results.append(handle.stats)
                messages.append(Message("assistant", reply))
        finally:
            model.close()
        return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-1b", action="store_true")
    args = ap.parse_args()
    models = [("stories260K (F32)", SHARED_MODELS / "stories260K" / "stories260K.gguf")]
    if not args.skip_1b:
        models.append(("llama 1.1B random (Q4_K_M)", cached_model()))
    rows = []
    for label, path in models:
        for fmt, template in (("no template", None), ("llama-2 chat", LLAMA2_TEMPLATE)):
            on, off = play(path, True, template), play(path, False, template)
            rows.append((f"{label}, {fmt}", on[-1], off[-1]))
    print("\nTurn 10 time to first token, KV cache on vs off (greedy, same conversation)")
    print(f"{'model, prompt format':<44} {'history':>8} {'prefilled on/off':>17} {'TTFT on':>10} {'TTFT off':>10} {'ratio':>7}")
    for label, on, off in rows:
        prefilled = f"{on.prompt_tokens - on.cached_tokens}/{off.prompt_tokens - off.cached_tokens}"
        print(f"{label:<44} {on.prompt_tokens:>8} {prefilled:>17} {on.ttft_s * 1000:>8.1f}ms {off.ttft_s * 1000:>8.1f}ms {on.ttft_s / off.ttft_s:>6.3f}x")


if __name__ == "__main__":
    main()
