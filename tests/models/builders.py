"""Test-built GGUF models: random weights in llama, qwen2, qwen3 and gemma3 shapes.

Dims are multiples of 256 so llama.cpp's quantizer can k-quantize every matrix; the
vocabulary is stories260K's 512 SentencePiece pieces (small, so the output layer and the
float64 reference stay cheap). Weights are scaled so that logits spread over several
units (greedy decoding then rarely meets a near-tie). Quantization is llama.cpp's own
(`benchmarks/synthetic_model.quantize`). Files are cached per session by the caller.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from synthetic_model import add_vocab, quantize, read_vocab  # noqa: E402


@dataclass(frozen=True)
class TestShape:
    name: str
    arch: str  # llama, qwen2, qwen3, gemma3
    dim: int = 256
    n_layers: int = 2
    n_heads: int = 8
    n_kv_heads: int = 2
    head_dim: int | None = None  # default dim // n_heads
    ffn: int = 512
    tied: bool = False
    rope_base: float = 10000.0
    llama3_rope: bool = False  # write a rope_freqs tensor (Llama 3.1 rope scaling)
    sliding_window: int = 0  # gemma3
    context: int = 512

    @property
    def hd(self) -> int:
        return self.head_dim or self.dim // self.n_heads


SHAPES = {
    s.name: s
    for s in [
        TestShape("llama-gqa1", "llama", n_heads=8, n_kv_heads=8),
        TestShape("llama-gqa4", "llama", n_heads=8, n_kv_heads=2, tied=True),
        TestShape("llama-gqa8", "llama", n_heads=8, n_kv_heads=1, llama3_rope=True, rope_base=500000.0),
        TestShape("qwen2", "qwen2", n_heads=8, n_kv_heads=2, tied=True, rope_base=1000000.0),
        TestShape("qwen3", "qwen3", n_heads=4, n_kv_heads=1, head_dim=128, rope_base=1000000.0),
        TestShape("gemma3", "gemma3", n_layers=6, n_heads=2, n_kv_heads=1, head_dim=256, tied=True,
                  rope_base=1000000.0, sliding_window=8),
    ]
}


def stories_vocab(models_dir: Path) -> tuple[list, list, list]:
    return read_vocab(models_dir / "stories260K" / "stories260K.gguf")


def llama3_rope_factors(head_dim: int, base: float, factor=8.0, low=1.0, high=4.0, original=8192) -> np.ndarray:
    """Llama 3.1's per-frequency divisors, as llama.cpp's converter writes `rope_freqs`."""
    inv = base ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv
    low_wl, high_wl = original / low, original / high
    smooth = (original / wavelen - low) / (high - low)
    return np.where(
        wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth))
    ).astype(np.float32)


def write_f32(shape: TestShape, path: Path, models_dir: Path, seed: int = 0) -> None:
    import gguf

    vocab_fields = stories_vocab(models_dir)
    vocab = len(vocab_fields[0])
    rng = np.random.default_rng(seed)
    a = shape.arch
    w = gguf.GGUFWriter(str(path), a)
    w.add_name(shape.name)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.dim)
    w.add_block_count(shape.n_layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.n_heads)
    w.add_head_count_kv(shape.n_kv_heads)
    w.add_key_length(shape.hd)
    w.add_value_length(shape.hd)
    if a == "llama":
        w.add_rope_dimension_count(shape.hd)
    w.add_rope_freq_base(shape.rope_base)
    w.add_layer_norm_rms_eps(1e-6 if a == "gemma3" else 1e-5)
    if shape.sliding_window:
        w.add_sliding_window(shape.sliding_window)
    w.add_file_type(0)
    add_vocab(w, vocab_fields)

    def mat(rows, cols):  # numpy order (out, in); unit-variance outputs
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    q_out, kv_out = shape.n_heads * shape.hd, shape.n_kv_heads * shape.hd
    w.add_tensor("token_embd.weight", rng.standard_normal((vocab, shape.dim)).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(shape.dim))
    if not shape.tied:
        w.add_tensor("output.weight", mat(vocab, shape.dim) * 4)
    if shape.llama3_rope:
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(shape.hd, shape.rope_base))
    for i in range(shape.n_layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(shape.dim))
        w.add_tensor(p + "attn_q.weight", mat(q_out, shape.dim) * 2)
        w.add_tensor(p + "attn_k.weight", mat(kv_out, shape.dim) * 2)
        w.add_tensor(p + "attn_v.weight", mat(kv_out, shape.dim))
        if a == "qwen2":
            for n, size in (("q", q_out), ("k", kv_out), ("v", kv_out)):
                w.add_tensor(p + f"attn_{n}.bias", (0.5 * rng.standard_normal(size)).astype(np.float32))
        if a in ("qwen3", "gemma3"):
            w.add_tensor(p + "attn_q_norm.weight", norm(shape.hd))
            w.add_tensor(p + "attn_k_norm.weight", norm(shape.hd))
        w.add_tensor(p + "attn_output.weight", mat(shape.dim, q_out))
        w.add_tensor(p + "ffn_norm.weight", norm(shape.dim))
        if a == "gemma3":
            w.add_tensor(p + "post_attention_norm.weight", norm(shape.dim))
            w.add_tensor(p + "post_ffw_norm.weight", norm(shape.dim))
        w.add_tensor(p + "ffn_gate.weight", mat(shape.ffn, shape.dim))
        w.add_tensor(p + "ffn_up.weight", mat(shape.ffn, shape.dim))
        w.add_tensor(p + "ffn_down.weight", mat(shape.dim, shape.ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build(shape_name: str, quant: str, folder: Path, models_dir: Path) -> Path:
    """The test model `shape_name` at `quant` ("F32" or a llama.cpp ftype name), cached
    in `folder`."""
    shape = SHAPES[shape_name]
    out = folder / f"{shape.name}-{quant}.gguf"
    if out.exists():
        return out
    f32 = folder / f"{shape.name}-F32.gguf"
    if not f32.exists():
        tmp = f32.with_suffix(".partial")
        write_f32(shape, tmp, models_dir)
        tmp.rename(f32)
    if quant == "F32":
        return f32
    import llama_cpp

    from localllm.cpu_backend import llama_log

    llama_log.install(False)  # the quantizer's per-tensor lines only when asked for
    quantize(f32, out, getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}"))
    return out
