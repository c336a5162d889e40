"""Build random-weight llama-shaped GGUF models for benchmarks, cached in the user cache.

Random weights are fine for speed (and for exactness checks); anything that needs
sensible text uses the real stories260K. The vocabulary is the real Llama 2 SentencePiece
vocabulary from the shared vocab-only GGUF, so prompts tokenize like a real model's.
Quantization is llama.cpp's own (`llama_model_quantize`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED_MODELS = Path(os.environ.get("LOCALLLM_TEST_MODELS", REPO.parent / "shared" / "models"))
VOCAB_GGUF = SHARED_MODELS / "llama-vocab-spm" / "ggml-vocab-llama-spm.gguf"


@dataclass(frozen=True)
class LlamaShape:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    context: int = 4096

    def n_params(self, vocab: int) -> int:
        head = self.dim // self.n_heads
        attn = self.dim * self.dim * 2 + self.dim * head * self.n_kv_heads * 2
        return vocab * self.dim * 2 + self.n_layers * (attn + 3 * self.dim * self.ffn + 2 * self.dim) + self.dim


# TinyLlama's shape: about 1.1B parameters, GQA 8 (32 heads, 4 KV heads).
LLAMA_1B = LlamaShape("random-llama-1.1b", dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632)


def cache_dir() -> Path:
    import platformdirs

    path = Path(platformdirs.user_cache_dir("localllm", appauthor=False)) / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_vocab(path: Path) -> tuple[list, list, list]:
    """(tokens, scores, token types) of a SentencePiece ("llama") GGUF vocabulary."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return tuple(r.fields[k].contents() for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"))


def add_vocab(w, vocab: tuple[list, list, list]) -> None:
    """Write a `read_vocab` vocabulary into a GGUFWriter, with Llama 2's special ids."""
    tokens, scores, types = vocab
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def write_f16(shape: LlamaShape, path: Path, seed: int = 0) -> None:
    import gguf

    vocab_fields = read_vocab(VOCAB_GGUF)
    vocab = len(vocab_fields[0])
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(shape.name)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.dim)
    w.add_block_count(shape.n_layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.n_heads)
    w.add_head_count_kv(shape.n_kv_heads)
    w.add_rope_dimension_count(shape.dim // shape.n_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    add_vocab(w, vocab_fields)

    def rand(*dims):  # gguf shapes are numpy order: (out, in)
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    kv = shape.dim // shape.n_heads * shape.n_kv_heads
    w.add_tensor("token_embd.weight", rand(vocab, shape.dim))
    w.add_tensor("output_norm.weight", np.ones(shape.dim, dtype=np.float32))
    w.add_tensor("output.weight", rand(vocab, shape.dim))
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(shape.dim, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(shape.dim, shape.dim))
        w.add_tensor(p + "attn_k.weight", rand(kv, shape.dim))
        w.add_tensor(p + "attn_v.weight", rand(kv, shape.dim))
        w.add_tensor(p + "attn_output.weight", rand(shape.dim, shape.dim))
        w.add_tensor(p + "ffn_norm.weight", np.ones(shape.dim, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(shape.ffn, shape.dim))
        w.add_tensor(p + "ffn_up.weight", rand(shape.ffn, shape.dim))
        w.add_tensor(p + "ffn_down.weight", rand(shape.dim, shape.ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def quantize(src: Path, dst: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 2
    tmp = dst.with_suffix(".partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {src}")
    os.replace(tmp, dst)


# A small model whose dims allow k-quants (multiples of 256), for tests: GQA 2.
LLAMA_TINY_KQUANT = LlamaShape("random-llama-tiny", dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, context=1024)


def cached_model(shape: LlamaShape = LLAMA_1B, quant: str = "Q4_K_M", folder: Path | None = None) -> Path:
    """The model of `shape` quantized to `quant`, built once and kept in `folder`
    (default: the user cache)."""
    import llama_cpp

    folder = folder or cache_dir()
    out = folder / f"{shape.name}-{quant}.gguf"
    if out.exists():
        return out
    f16 = folder / f"{shape.name}-F16.gguf"
    t0 = time.perf_counter()
    if not f16.exists():
        print(f"building {f16.name} (random weights, {shape.n_params(32000) / 1e9:.2f}B parameters)...", file=sys.stderr)
        write_f16(shape, f16)
    if quant == "F16":
        return f16
    print(f"quantizing to {quant} with llama.cpp...", file=sys.stderr)
    quantize(f16, out, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}"))
    f16.unlink()
    print(f"built {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def benchmark_models(include_1b: bool = True) -> list[tuple[str, Path]]:
    """(label, path) of the real SmolLM2 chat model and, unless left out, the 1.1B Q4_K_M
    built here: the pair the llama-server comparisons run on."""
    models = [("SmolLM2-135M Q4_1", SHARED_MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")]
    if include_1b:
        models.append(("1.1B Q4_K_M", cached_model()))
    return models


if __name__ == "__main__":
    print(cached_model())
