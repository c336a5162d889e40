"""Gemma 3 (text): sliding-window layers alternating with global ones.

- Layer i is global when i % pattern == pattern - 1 (pattern 6 unless the GGUF says
  otherwise, `attention.sliding_window_pattern`, as llama.cpp reads it); the others attend
  only to the last `sliding_window` positions, with their own rope base (10000 unless
  `rope.freq_base_swa`) and no rope scaling. Global layers use `rope.freq_base` and the
  linear rope scaling of the larger models.
- RMS norm on each query and key head, then the rope; queries scaled by
  1/sqrt(head_dim) (1/sqrt(dim/heads) for the 27B, as llama.cpp does).
- Four norms per block: before and after attention, before and after the MLP (GELU,
  tanh approximation, gated). Embeddings scaled by sqrt(dim); output tied to them.
GGUF norm weights already hold 1 + w (llama.cpp's converter adds it); a Hugging Face
folder's do not, so `sanitize` adds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx

from localllm.models import llama
from localllm.models.cache import STEP, LayerCache, SlidingKVCache
from localllm.models.layers import Rope, geglu, linear, rms_norm, rope_attend, split_heads
from localllm.models.llama import ModelArgs, make_layer_cache

DEFAULT_PATTERN = 6
LOCAL_ROPE_BASE = 10000.0


@dataclass
class Gemma3Args(ModelArgs):
    sliding_window: int = 0
    global_layers: tuple[bool, ...] = ()
    local_rope_base: float = LOCAL_ROPE_BASE
    query_scale: float = 1.0


def _layer_pattern(n_layers: int, pattern) -> tuple[bool, ...]:
    """True for global layers. `pattern` is an int period or a per-layer list of
    is-sliding flags."""
    if isinstance(pattern, (list, tuple)):
        return tuple(not bool(p) for p in pattern[:n_layers])
    n = int(pattern)
    return tuple(n == 0 or i % n == n - 1 for i in range(n_layers)) if n else (False,) * n_layers


def from_gguf(meta: dict, tensors: dict) -> Gemma3Args:
    base = llama.args_from_gguf(meta, tensors, traditional=False)
    arch = base.architecture
    window = int(meta.get(f"{arch}.attention.sliding_window", 0) or 0)
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", DEFAULT_PATTERN) if window else 1
    n_params_27b = base.n_layers == 62
    return Gemma3Args(
        **vars(base),
        sliding_window=window,
        global_layers=_layer_pattern(base.n_layers, pattern) if window else (True,) * base.n_layers,
        local_rope_base=float(meta.get(f"{arch}.rope.freq_base_swa", LOCAL_ROPE_BASE)),
        query_scale=1.0 / math.sqrt(base.dim / base.n_heads if n_params_27b else base.head_dim),
    )


def from_config(config: dict) -> Gemma3Args:
    config = dict(config.get("text_config") or config)
    config.setdefault("rope_theta", 1000000.0)
    config.setdefault("rms_norm_eps", 1e-6)
    base = llama.args_from_config(config, "gemma3")
    window = int(config.get("sliding_window") or 0)
    if "layer_types" in config:
        flags = tuple(t == "full_attention" for t in config["layer_types"])
    else:
        flags = _layer_pattern(base.n_layers, int(config.get("sliding_window_pattern", DEFAULT_PATTERN)))
    scalar = float(config.get("query_pre_attn_scalar", base.head_dim))
    return Gemma3Args(
        **vars(base),
        sliding_window=window,
        global_layers=flags if window else (True,) * base.n_layers,
        local_rope_base=float(config.get("rope_local_base_freq", LOCAL_ROPE_BASE)),
        query_scale=1.0 / math.sqrt(scalar),
    )


class Attention:
    def __init__(self, args: Gemma3Args, w: dict, prefix: str, is_global: bool):
        self.args = args
        self.q, self.k, self.v, self.o = (w[prefix + n + ".weight"] for n in ("attn_q", "attn_k", "attn_v", "attn_output"))
        self.q_norm, self.k_norm = w[prefix + "attn_q_norm.weight"], w[prefix + "attn_k_norm.weight"]
        self.window = None if is_global else args.sliding_window
        base = args.rope_base if is_global else args.local_rope_base
        self.rope = Rope(args.rope_dims, base, False, args.rope_scale if is_global else 1.0)

    def __call__(self, x: mx.array, cache: LayerCache) -> mx.array:
        a = self.args
        q = rms_norm(split_heads(linear(x, self.q), a.n_heads, a.head_dim), self.q_norm, a.norm_eps)
        k = rms_norm(split_heads(linear(x, self.k), a.n_kv_heads, a.head_dim), self.k_norm, a.norm_eps)
        v = split_heads(linear(x, self.v), a.n_kv_heads, a.head_dim)  # [B, Hkv, L, D]
        return self.o(rope_attend(q, k, v, cache, self.rope, a.query_scale, self.window))


class Block:
    def __init__(self, args: Gemma3Args, w: dict, i: int):
        p = f"blk.{i}."
        self.is_global = args.global_layers[i]
        self.attn = Attention(args, w, p, self.is_global)
        self.norms = [w[p + n + ".weight"] for n in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")]
        self.gate, self.up, self.down = w[p + "ffn_gate.weight"], w[p + "ffn_up.weight"], w[p + "ffn_down.weight"]
        self.eps = args.norm_eps

    def __call__(self, x: mx.array, cache: LayerCache) -> mx.array:
        pre_attn, post_attn, pre_ffn, post_ffn = self.norms
        h = x + rms_norm(self.attn(rms_norm(x, pre_attn, self.eps), cache), post_attn, self.eps)
        ffn = geglu(rms_norm(h, pre_ffn, self.eps), self.gate, self.up, self.down)
        return h + rms_norm(ffn, post_ffn, self.eps)


class Model(llama.Model):
    def __init__(self, args: Gemma3Args, weights: dict, dtype=mx.float32):
        self.args, self.dtype = args, dtype
        self.embed = weights["token_embd.weight"]
        self.output = weights.get("output.weight", self.embed)
        self.norm = weights["output_norm.weight"]
        self.layers = [Block(args, weights, i) for i in range(args.n_layers)]

    def embed_tokens(self, tokens: mx.array) -> mx.array:
        return self.embed.rows(tokens, self.dtype) * math.sqrt(self.args.dim)

    def make_cache(self, kv_type: str = "f16", sliding_keep: int = STEP) -> list[LayerCache]:
        """Global layers get a full cache of `kv_type`; sliding layers keep their window
        plus `sliding_keep` positions, in float16 (q8_0 too: the window is small)."""
        dtype = mx.float16 if kv_type in ("f16", "q8_0") else self.dtype
        return [
            make_layer_cache(kv_type, self.dtype) if layer.is_global
            else SlidingKVCache(self.args.sliding_window, sliding_keep, dtype)
            for layer in self.layers
        ]


HF_LAYER_NAMES = dict(
    llama.HF_LAYER_NAMES,
    post_attention_layernorm="post_attention_norm",
    pre_feedforward_layernorm="ffn_norm",
    post_feedforward_layernorm="post_ffw_norm",
)


def sanitize(tensors: dict) -> dict:
    out = {}
    for name, value in tensors.items():
        mapped = llama.hf_to_gguf_name(name, HF_LAYER_NAMES)
        if mapped is None:
            continue
        if mapped.endswith("norm.weight"):
            value = value + 1.0  # Gemma's RMS norm multiplies by (1 + w)
        out[mapped] = value
    return out

