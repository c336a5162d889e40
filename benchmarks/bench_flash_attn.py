"""Flash attention on vs off across models and cached depths, through the same timing code
the load-time calibration uses (`localllm.cpu_backend.attention_calibration.measure`).

Prints, per model: prefill ms/token and decode ms/step at two depths with and without
flash attention, the ratio off/on (above 1: flash attention is faster), the modelled cost
of a chat turn at several depths, and what `--flash-attn auto` picks. The 1.1B model is
built (random weights, Q4_K_M) into the user cache on first use.

    python benchmarks/bench_flash_attn.py [--threads 2] [--depth 1024] [--rounds 3] [--no-1b]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from localllm.cpu_backend.attention_calibration import PREFILL_TOKENS, REPLY_TOKENS, measure  # noqa: E402
from localllm.cpu_backend import llama_log  # noqa: E402
from localllm.cpu_backend.llamacpp import KV_GGML_TYPES  # noqa: E402

MODELS = Path(os.environ.get("LOCALLLM_TEST_MODELS", REPO.parent / "shared" / "models"))


def models(include_1b: bool) -> list[tuple[str, Path]]:
    out = [("stories260K F32", MODELS / "stories260K" / "stories260K.gguf"),
           ("SmolLM2-135M Q4_1", MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    if include_1b:
        from synthetic_model import cached_model

        out.append(("random llama 1.1B Q4_K_M", cached_model()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=1024, help="the deeper of the two measured depths")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-type", default="f16", choices=("f16",))
    ap.add_argument("--no-1b", action="store_true")
    args = ap.parse_args()
    llama_log.install(verbose=False)
    print(f"threads {args.threads}, KV {args.kv_type}, depths 128 and {args.depth}, {args.rounds} rounds (fastest of each)\n")
    print("| model | FA | prefill ms/tok | decode ms @128 | decode ms @%d | turn s @512 | turn s @1500 | turn s @4000 |" % args.depth)
    print("|---|---|---|---|---|---|---|---|")
    for name, path in models(not args.no_1b):
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_extra_bufts = False
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
        t = measure(model, flash_attn_on=[False, True], threads=args.threads, kv_type=KV_GGML_TYPES[args.kv_type],
                    depth_hi=args.depth, rounds=args.rounds, decode_steps=8, chunk=128)
        for fa in (False, True):
            x = t[fa]
            print(f"| {name} | {'on' if fa else 'off'} | {x.prefill_s_per_token * 1e3:.3f} | {x.decode_s_lo * 1e3:.2f} | "
                  f"{x.decode_s_hi * 1e3:.2f} | {x.turn_s(512):.2f} | {x.turn_s(1500):.2f} | {x.turn_s(4000):.2f} |")
        off, on = t[False], t[True]
        print(f"| {name} | off/on | {off.prefill_s_per_token / on.prefill_s_per_token:.2f}x | "
              f"{off.decode_s_lo / on.decode_s_lo:.2f}x | {off.decode_s_hi / on.decode_s_hi:.2f}x | "
              f"{off.turn_s(512) / on.turn_s(512):.2f}x | {off.turn_s(1500) / on.turn_s(1500):.2f}x | "
              f"{off.turn_s(4000) / on.turn_s(4000):.2f}x |")
        llama_cpp.llama_model_free(model)
    print(f"\nturn = {PREFILL_TOKENS} prompt tokens + {REPLY_TOKENS} reply tokens decoded at the given depth "
          "(decode extrapolated linearly from the two measured depths)")


if __name__ == "__main__":
    main()
