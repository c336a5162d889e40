"""Our Metal kernels against what the MLX path does without them, on Apple Silicon.

Rows (each time a median over interleaved repeats, so machine noise hits both sides):
- quantized matmul, 1 / 4 / 16 rows of x, on TinyLlama-1.1B's matrix shapes: our kernel
  on GGUF Q4_K / Q6_K / Q8_0 blocks vs the exact MLX repack the path uses otherwise
  (`mx.quantized_matmul`: 4-bit and 8-bit affine groups of 32; Q6_K as two 6-bit halves);
- decode attention, 1 and 4 queries, GQA 4, head size 128, 512 / 2048 / 8192 cached
  positions: our kernel vs `mx.fast.scaled_dot_product_attention` (float16 cache), and vs
  the `mx.quantized_matmul` attention over the 8-bit cache (--kv-type q8_0);
- the MLX path's greedy decode tokens/s on a random-weight TinyLlama-shaped Q4_K_M model,
  with and without the kernels (block weights vs repacked; 8-bit cache through the kernel
  vs through quantized_matmul).

Elsewhere it says it needs Apple Silicon and exits 0. `--emulate` runs the same code on
tiny shapes with the CPU emulator standing in for Metal: a smoke test of this script,
not a measurement.

    python benchmarks/bench_metal.py [--repeats 7] [--skip-model]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# TinyLlama-1.1B: (out, in) of q/o, k/v, gate/up, down, and the output layer.
MATMUL_SHAPES = [(2048, 2048), (256, 2048), (5632, 2048), (2048, 5632), (32000, 2048)]
TINY_MATMUL_SHAPES = [(40, 512), (9, 256)]
ATTENTION_LENGTHS = [512, 2048, 8192]
TINY_ATTENTION_LENGTHS = [40]


def apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def timed(fn, repeats: int, inner: int) -> float:
    """Seconds per call: median over `repeats` of `inner` calls evaluated together."""
    import mlx.core as mx

    mx.eval(fn())  # warm up (compiles the kernel)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval([fn() for _ in range(inner)])
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def interleaved(sides: dict, repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each side, measured turn by turn."""
    runs = {name: [] for name in sides}
    for name, fn in sides.items():
        timed(fn, 1, 1)
    for _ in range(repeats):
        for name, fn in sides.items():
            runs[name].append(timed(fn, 1, inner))
    return {name: statistics.median(t) for name, t in runs.items()}


def random_gguf_rows(rng, quant: str, rows: int, k: int) -> np.ndarray:
    values = {"q8_0": 32, "q4_k": 256, "q6_k": 256}[quant]
    size = {"q8_0": 34, "q4_k": 144, "q6_k": 210}[quant]
    nb = k // values
    blocks = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    for off in {"q8_0": (0,), "q4_k": (0, 2), "q6_k": (208,)}[quant]:
        scale = (rng.uniform(0.5, 2.0, size=(rows, nb)) * 1e-3).astype(np.float16)
        blocks[:, :, off:off + 2] = scale.view(np.uint8).reshape(rows, nb, 2)
    return blocks.reshape(rows, nb * size)


def bench_matmul(shapes, rows_list, repeats, inner, kernels) -> list[tuple]:
    import mlx.core as mx
    from gguf import GGMLQuantizationType as T

    from localllm.models.gguf_repack import repack
    from localllm.models.weights import BlockWeight

    qtypes = {"q4_k": T.Q4_K, "q6_k": T.Q6_K, "q8_0": T.Q8_0}
    rng = np.random.default_rng(0)
    out = []
    for quant, qtype in qtypes.items():
        for n, k in shapes:
            data = random_gguf_rows(rng, quant, n, k)
            ours = BlockWeight(mx.array(data), quant, k, kernels=kernels)
            theirs = repack(data, qtype, (n, k))
            for m in rows_list:
                x = mx.array(rng.standard_normal((m, k)).astype(np.float16))
                t = interleaved({"kernel": lambda: ours(x), "mlx": lambda: theirs(x)}, repeats, inner)
                out.append((f"{quant} {n}x{k}", m, t["kernel"], t["mlx"]))
    return out


def bench_attention(lengths, repeats, inner, kernels) -> list[tuple]:
    import mlx.core as mx

    from localllm.metal_kernels.sdpa_decode import causal_mask
    from localllm.models.layers import _quantized_attention

    rng = np.random.default_rng(1)
    hq, hkv, d = 32, 8, 128
    out = []
    for length in lengths:
        cap = length + 256  # a cache buffer with room left, as the MLX path grows it
        k = mx.array(rng.standard_normal((1, hkv, cap, d)).astype(np.float16))
        v = mx.array(rng.standard_normal((1, hkv, cap, d)).astype(np.float16))
        k8, v8 = mx.quantize(k, group_size=32, bits=8), mx.quantize(v, group_size=32, bits=8)
        for n_queries in (1, 4):
            q = mx.array(rng.standard_normal((1, hq, n_queries, d)).astype(np.float16))
            mask = causal_mask(n_queries, length) if n_queries > 1 else None
            k_held, v_held = k[:, :, :length], v[:, :, :length]
            k8_held = tuple(a[:, :, :length] for a in k8)
            v8_held = tuple(a[:, :, :length] for a in v8)
            t = interleaved({
                "kernel": lambda: kernels(q, k, v, length, d ** -0.5),
                "mlx": lambda: mx.fast.scaled_dot_product_attention(q, k_held, v_held, scale=d ** -0.5, mask=mask),
            }, repeats, inner)
            out.append((f"f16 cache S={length}", n_queries, t["kernel"], t["mlx"]))
            t = interleaved({
                "kernel": lambda: kernels(q, k8, v8, length, d ** -0.5),
                "mlx": lambda: _quantized_attention(q, k8_held, v8_held, d ** -0.5, mask),
            }, repeats, inner)
            out.append((f"8-bit cache S={length}", n_queries, t["kernel"], t["mlx"]))
    return out


def decode_tokens_per_s(model, kv_type: str, n_prompt: int, n_new: int) -> float:
    import mlx.core as mx

    cache = model.make_cache(kv_type)
    logits = model(mx.array([list(range(1, n_prompt + 1))]), cache)
    token = mx.argmax(logits, axis=-1)
    mx.eval(token)
    t0 = time.perf_counter()
    for _ in range(n_new):
        token = mx.argmax(model(token[:, None], cache), axis=-1)
        mx.async_eval(token)
    mx.eval(token)
    return n_new / (time.perf_counter() - t0)


def bench_model(repeats: int, n_prompt: int, n_new: int, shape=None) -> list[tuple]:
    import mlx.core as mx

    from localllm.metal_kernels import sdpa_decode
    from localllm.models.architectures import architecture_module
    from localllm.models.gguf_loader import load_gguf
    from synthetic_model import LLAMA_1B, cached_model

    path = cached_model(shape or LLAMA_1B, "Q4_K_M")
    module = architecture_module("llama")
    models = {}
    for keep in (True, False):
        weights = load_gguf(path, keep_blocks=keep)
        tensors = dict(weights.tensors)
        models[keep] = module.Model(module.from_gguf(weights.metadata, tensors), tensors, mx.float16)
    with_kernel = sdpa_decode.metal_kernels
    runs = {key: [] for key in ("blocks", "repacked", "q8 kernel", "q8 mlx")}
    for _ in range(repeats):
        runs["blocks"].append(decode_tokens_per_s(models[True], "f16", n_prompt, n_new))
        runs["repacked"].append(decode_tokens_per_s(models[False], "f16", n_prompt, n_new))
        runs["q8 kernel"].append(decode_tokens_per_s(models[True], "q8_0", n_prompt, n_new))
        sdpa_decode.metal_kernels = lambda: None  # attention through quantized_matmul
        try:
            runs["q8 mlx"].append(decode_tokens_per_s(models[True], "q8_0", n_prompt, n_new))
        finally:
            sdpa_decode.metal_kernels = with_kernel
    med = {k: statistics.median(v) for k, v in runs.items()}
    return [
        ("Q4_K_M weights, f16 cache", med["blocks"], med["repacked"]),
        ("Q4_K_M block weights, q8_0 cache", med["q8 kernel"], med["q8 mlx"]),
    ]


def print_kernel_table(title: str, rows: list[tuple], what: str) -> None:
    print(f"\n{title}")
    print(f"{what:<28} {'rows':>4} {'kernel us':>10} {'mlx us':>10} {'mlx/kernel':>10}")
    for name, m, ours, theirs in rows:
        print(f"{name:<28} {m:>4} {ours * 1e6:>10.1f} {theirs * 1e6:>10.1f} {theirs / ours:>10.2f}")


def print_model_table(title: str, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(f"{'model':<36} {'with kernels tok/s':>18} {'without tok/s':>14} {'ratio':>6}")
    for name, ours, theirs in rows:
        print(f"{name:<36} {ours:>18.1f} {theirs:>14.1f} {ours / theirs:>6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inner", type=int, default=20, help="calls per timed batch")
    parser.add_argument("--skip-model", action="store_true", help="kernels only, no tokens/s")
    parser.add_argument("--emulate", action="store_true", help="tiny shapes on the CPU emulator: a smoke test, not a measurement")
    args = parser.parse_args()

    if args.emulate:
        from localllm.metal_kernels.emulator import metal_kernel
        from localllm.metal_kernels.quant_matmul import QuantMatmulKernels
        from localllm.metal_kernels.sdpa_decode import DecodeAttentionKernels

        from localllm.metal_kernels import quant_matmul, sdpa_decode
        from synthetic_model import LLAMA_TINY_KQUANT

        matmul, attention = QuantMatmulKernels(metal_kernel), DecodeAttentionKernels(metal_kernel)
        print("EMULATED on the CPU (Metal emulator): these times measure nothing about a GPU")
        print_kernel_table("quantized matmul (emulated)", bench_matmul(TINY_MATMUL_SHAPES, [1, 4], 1, 1, matmul), "weights")
        print_kernel_table("decode attention (emulated)", bench_attention(TINY_ATTENTION_LENGTHS, 1, 1, attention), "cache")
        quant_matmul.metal_kernels, sdpa_decode.metal_kernels = (lambda: matmul), (lambda: attention)
        rows = bench_model(1, n_prompt=4, n_new=2, shape=LLAMA_TINY_KQUANT)
        print_model_table("MLX path decode (emulated, tiny model)", rows)
        return
    if not apple_silicon():
        print("bench_metal.py needs Apple Silicon with Metal (this machine is "
              f"{sys.platform}/{platform.machine()}); nothing to measure here.")
        return
    import mlx.core as mx

    if not mx.metal.is_available():
        print("bench_metal.py needs Metal, and MLX reports none on this machine; nothing to measure.")
        return
    from localllm.metal_kernels.quant_matmul import metal_kernels as matmul_kernels
    from localllm.metal_kernels.sdpa_decode import metal_kernels as attention_kernels

    print(f"Metal kernels vs MLX built-ins on {platform.processor() or platform.machine()}, "
          f"median of {args.repeats} interleaved batches of {args.inner} calls (float16 activations)")
    print_kernel_table("quantized matmul: GGUF blocks (kernel) vs exact MLX repack (quantized_matmul)",
                       bench_matmul(MATMUL_SHAPES, [1, 4, 16], args.repeats, args.inner, matmul_kernels()), "weights")
    print_kernel_table("decode attention, 32 q heads / 8 KV heads, head size 128",
                       bench_attention(ATTENTION_LENGTHS, args.repeats, args.inner, attention_kernels()), "cache")
    if not args.skip_model:
        rows = bench_model(args.repeats, n_prompt=128, n_new=64)
        print_model_table("MLX path greedy decode, random-weight TinyLlama-1.1B shape, 128-token prompt, 64 new tokens", rows)


if __name__ == "__main__":
    main()
