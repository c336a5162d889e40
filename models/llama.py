"""The llama family (Llama 2, Llama 3.x with its rope scaling, Mistral, SmolLM,
TinyLlama), and the decoder the Qwen files reuse.

Weights are held under their GGUF names (`blk.N.attn_q.weight`, ...); a config.json
folder's Hugging Face names are mapped onto them by `sanitize`. Optional tensors switch
features on: `attn_q.bias` etc. (Qwen2's q/k/v bias), `attn_q_norm`/`attn_k_norm`
(Qwen3's per-head RMS norm), a missing `output.weight` (tied embeddings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from localllm.errors import ModelFileError
from localllm.models.cache import KVCache, LayerCache, QuantizedKVCache
from localllm.models.layers import Rope, linear, llama3_rope_factors, rms_norm, rope_attend, rope_periods, split_heads, swiglu


@dataclass
class ModelArgs:
    architecture: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn: int
    vocab_size: int
    norm_eps: float
    rope_base: float
    rope_dims: int
    rope_traditional: bool
    context_length: int
    rope_scale: float = 1.0
    rope_factors: list[float] | None = None  # Llama 3.1 per-frequency divisors


def meta_get(meta: dict, arch: str, key: str, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
        raise ModelFileError(f"the GGUF metadata has no {arch}.{key}: the file is incomplete or not a {arch} model")
    return value


def linear_rope_scale(meta: dict, arch: str) -> float:
    kind = str(meta.get(f"{arch}.rope.scaling.type", "none"))
    if kind == "none":
        return 1.0
    if kind == "linear":
        return 1.0 / float(meta.get(f"{arch}.rope.scaling.factor", 1.0) or 1.0)
    raise ModelFileError(f"rope scaling {kind!r} is not supported on the MLX path yet: use --backend llamacpp")


def args_from_gguf(meta: dict, tensors: dict, traditional: bool) -> ModelArgs:
    arch = str(meta["general.architecture"])
    dim = int(meta_get(meta, arch, "embedding_length"))
    n_heads = int(meta_get(meta, arch, "attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length", dim // n_heads))
    factors = tensors.pop("rope_freqs.weight", None)
    return ModelArgs(
        architecture=arch,
        dim=dim,
        n_layers=int(meta_get(meta, arch, "block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        ffn=int(meta_get(meta, arch, "feed_forward_length")),
        vocab_size=int(tensors["token_embd.weight"].shape[0]),
        norm_eps=float(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        rope_dims=int(meta.get(f"{arch}.rope.dimension_count", head_dim)),
        rope_traditional=traditional,
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        rope_scale=linear_rope_scale(meta, arch),
        rope_factors=None if factors is None else [float(f) for f in factors.tolist()],
    )


def args_from_config(config: dict, architecture: str) -> ModelArgs:
    dim = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or dim // n_heads)
    base = float(config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    factors, scale = None, 1.0
    if kind == "llama3":
        factors = llama3_rope_factors(
            head_dim, base, float(scaling["factor"]), float(scaling.get("low_freq_factor", 1.0)),
            float(scaling.get("high_freq_factor", 4.0)), int(scaling.get("original_max_position_embeddings", 8192)),
        )
    elif kind == "linear":
        scale = 1.0 / float(scaling["factor"])
    elif kind not in (None, "default"):
        raise ModelFileError(f"rope scaling {kind!r} is not supported on the MLX path yet")
    return ModelArgs(
        architecture=architecture,
        dim=dim,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        ffn=int(config["intermediate_size"]),
        vocab_size=int(config["vocab_size"]),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_base=base,
        rope_dims=head_dim,
        rope_traditional=False,  # Hugging Face Q/K rows are not permuted
        context_length=int(config.get("max_position_embeddings", 0) or 0),
        rope_scale=scale,
        rope_factors=factors,
    )


def from_gguf(meta: dict, tensors: dict) -> ModelArgs:
    # llama.cpp's converter permutes llama Q/K rows for adjacent-pair rotation.
    return args_from_gguf(meta, tensors, traditional=True)


def from_config(config: dict) -> ModelArgs:
    return args_from_config(config, "llama")


def make_rope(args: ModelArgs) -> Rope:
    periods = None if args.rope_factors is None else rope_periods(args.rope_dims, args.rope_base, args.rope_factors)
    return Rope(args.rope_dims, args.rope_base, args.rope_traditional, args.rope_scale, periods)


class Attention:
    def __init__(self, args: ModelArgs, w: dict, prefix: str, rope: Rope, dtype):
        self.args, self.rope = args, rope
        self.q, self.k, self.v, self.o = (w[prefix + n + ".weight"] for n in ("attn_q", "attn_k", "attn_v", "attn_output"))
        self.bias = [w.get(prefix + n + ".bias") for n in ("attn_q", "attn_k", "attn_v")]
        self.q_norm = w.get(prefix + "attn_q_norm.weight")
        self.k_norm = w.get(prefix + "attn_k_norm.weight")
        self.scale = 1.0 / math.sqrt(args.head_dim)

    def __call__(self, x: mx.array, cache: LayerCache) -> mx.array:
        a = self.args
        q = split_heads(linear(x, self.q, self.bias[0]), a.n_heads, a.head_dim)  # [B, Hq, L, D]
        k = split_heads(linear(x, self.k, self.bias[1]), a.n_kv_heads, a.head_dim)  # [B, Hkv, L, D]
        v = split_heads(linear(x, self.v, self.bias[2]), a.n_kv_heads, a.head_dim)
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm, a.norm_eps), rms_norm(k, self.k_norm, a.norm_eps)
        return self.o(rope_attend(q, k, v, cache, self.rope, self.scale))


class Block:
    def __init__(self, args: ModelArgs, w: dict, i: int, rope: Rope, dtype):
        p = f"blk.{i}."
        self.attn = Attention(args, w, p, rope, dtype)
        self.attn_norm, self.ffn_norm = w[p + "attn_norm.weight"], w[p + "ffn_norm.weight"]
        self.gate, self.up, self.down = w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"], w[p + "ffn_down.weight"]
        self.eps = args.norm_eps

    def __call__(self, x: mx.array, cache: LayerCache) -> mx.array:
        h = x + self.attn(rms_norm(x, self.attn_norm, self.eps), cache)
        return h + swiglu(rms_norm(h, self.ffn_norm, self.eps), self.gate, self.up, self.down)


class Model:
    """Decoder-only transformer over GGUF-named weights."""

    def __init__(self, args: ModelArgs, weights: dict, dtype=mx.float32):
        self.args, self.dtype = args, dtype
        self.embed = weights["token_embd.weight"]
        self.output = weights.get("output.weight", self.embed)  # tied when absent
        self.norm = weights["output_norm.weight"]
        rope = make_rope(args)
        self.layers = [Block(args, weights, i, rope, dtype) for i in range(args.n_layers)]

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        return self.embed.rows(tokens, self.dtype)

    def __call__(self, tokens: mx.array, caches: list, all_logits: bool = False,
                 rows: mx.array | None = None) -> mx.array:
        """tokens [B, L] -> logits [B, L, vocab] (all_logits) or [B, vocab] (last), or
        [B, R, vocab] for the positions `rows` [R]. `caches`: one per layer, each a layer
        cache or a `PackedLayer` (several sequences packed along L)."""
        h = self.embed_tokens(tokens)
        for layer, cache in zip(self.layers, caches):
            h = layer(h, cache)
        if rows is not None:
            h = h[:, rows]
        elif not all_logits:
            h = h[:, -1]
        return self.output(rms_norm(h, self.norm, self.args.norm_eps))

    def make_cache(self, kv_type: str = "f16", sliding_keep: int = 0) -> list[LayerCache]:
        """One cache per layer: "f16", "q8_0" (8-bit) or "f32" (the compute dtype)."""
        return [make_layer_cache(kv_type, self.dtype) for _ in self.layers]


def make_layer_cache(kv_type: str, dtype) -> LayerCache:
    if kv_type == "q8_0":
        return QuantizedKVCache()
    return KVCache(mx.float16 if kv_type == "f16" else dtype)


HF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def hf_to_gguf_name(name: str, layer_names: dict = HF_LAYER_NAMES) -> str | None:
    """A Hugging Face tensor name ('model.layers.3.mlp.up_proj.scales') to its GGUF
    name ('blk.3.ffn_up.scales'); None for tensors the model does not use."""
    for prefix in ("language_model.", ""):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    stem, _, suffix = name.rpartition(".")
    if name in HF_NAMES:
        return HF_NAMES[name]
    if stem in ("model.embed_tokens", "lm_head"):
        return HF_NAMES[stem + ".weight"].replace(".weight", "." + suffix)
    parts = stem.split(".")
    if len(parts) >= 4 and parts[0] == "model" and parts[1] == "layers":
        mapped = layer_names.get(".".join(parts[3:]))
        if mapped is not None:
            return f"blk.{parts[2]}.{mapped}.{suffix}"
    return None


def sanitize(tensors: dict) -> dict:
    """Hugging Face names to GGUF names; unused tensors (rotary caches) dropped."""
    out = {}
    for name, value in tensors.items():
        mapped = hf_to_gguf_name(name)
        if mapped is not None:
            out[mapped] = value
    return out
