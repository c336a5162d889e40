"""A float64 numpy forward pass for the test-built and real GGUF models: independent of
MLX and of `localllm.models` (its own GGUF reading through `gguf`, its own attention,
rope and norms), so the MLX path is checked against something it does not share code with.

Supports llama (adjacent-pair rope, optional `rope_freqs`), qwen2 (q/k/v bias), qwen3
(q/k head norms) and gemma3 (sliding/global layers, four norms, GELU, scaled and tied
embeddings), the way llama.cpp computes them. No cache: every call runs the whole
sequence, so it is the plainest possible reading of the model.
"""

from __future__ import annotations

import math

import gguf
import numpy as np


class ReferenceModel:
    def __init__(self, path, weight_dtype=np.float64):
        """`weight_dtype=np.float32` halves the memory (the dequantized values are exact
        in float32); the arithmetic stays float64 either way."""
        r = gguf.GGUFReader(str(path))
        self.meta = {k: f.contents() for k, f in r.fields.items() if len(f.data) <= 64 and not k.startswith("GGUF.")}
        self.w = {}
        for t in r.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))
            self.w[t.name] = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(weight_dtype)
        a = self.arch = self.meta["general.architecture"]
        m = lambda k, d=None: self.meta.get(f"{a}.{k}", d)  # noqa: E731
        self.dim, self.n_layers = m("embedding_length"), m("block_count")
        self.n_heads = m("attention.head_count")
        self.n_kv = m("attention.head_count_kv", self.n_heads)
        self.hd = m("attention.key_length", self.dim // self.n_heads)
        self.eps = m("attention.layer_norm_rms_epsilon", 1e-5)
        self.base = m("rope.freq_base", 10000.0)
        self.window = m("attention.sliding_window", 0) if a == "gemma3" else 0
        self.output = self.w.get("output.weight", self.w["token_embd.weight"])

    def _norm(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def _rope(self, x, base, pairs_adjacent, factors=None):
        """x [T, heads, hd] at positions 0..T-1."""
        T, _, hd = x.shape
        inv = base ** -(np.arange(0, hd, 2) / hd)
        if factors is not None:
            inv = inv / factors
        ang = np.arange(T)[:, None] * inv[None, :]  # [T, hd/2]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if pairs_adjacent:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
            return out
        x0, x1 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)

    def _attention(self, h, i, is_global):
        p, a, T = f"blk.{i}.", self.arch, h.shape[0]
        proj = lambda n: h @ self.w[p + n + ".weight"].T + self.w.get(p + n + ".bias", 0.0)  # noqa: E731
        q = proj("attn_q").reshape(T, self.n_heads, self.hd)
        k = proj("attn_k").reshape(T, self.n_kv, self.hd)
        v = proj("attn_v").reshape(T, self.n_kv, self.hd)
        if p + "attn_q_norm.weight" in self.w:
            q, k = self._norm(q, self.w[p + "attn_q_norm.weight"]), self._norm(k, self.w[p + "attn_k_norm.weight"])
        base = self.base if (a != "gemma3" or is_global) else self.meta.get(f"{a}.rope.freq_base_swa", 10000.0)
        q = self._rope(q, base, a == "llama", self.w.get("rope_freqs.weight"))
        k = self._rope(k, base, a == "llama", self.w.get("rope_freqs.weight"))
        rep = self.n_heads // self.n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(self.hd)
        qpos, kpos = np.arange(T)[:, None], np.arange(T)[None, :]
        allowed = kpos <= qpos
        if self.window and not is_global:
            allowed &= qpos - kpos < self.window
        scores = np.where(allowed[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(T, -1)
        return out @ self.w[p + "attn_output.weight"].T

    def _mlp(self, x, i):
        p = f"blk.{i}."
        g = x @ self.w[p + "ffn_gate.weight"].T
        if self.arch == "gemma3":
            g = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
        else:
            g = g / (1 + np.exp(-g))
        return (g * (x @ self.w[p + "ffn_up.weight"].T)) @ self.w[p + "ffn_down.weight"].T

    def logits(self, tokens) -> np.ndarray:
        """[len(tokens), vocab] float64."""
        h = self.w["token_embd.weight"][np.asarray(tokens)].astype(np.float64)
        gemma = self.arch == "gemma3"
        if gemma:
            h = h * math.sqrt(self.dim)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            is_global = not self.window or i % 6 == 5
            a = self._attention(self._norm(h, self.w[p + "attn_norm.weight"]), i, is_global)
            if gemma:
                a = self._norm(a, self.w[p + "post_attention_norm.weight"])
            h = h + a
            f = self._mlp(self._norm(h, self.w[p + "ffn_norm.weight"]), i)
            if gemma:
                f = self._norm(f, self.w[p + "post_ffw_norm.weight"])
            h = h + f
        return self._norm(h, self.w["output_norm.weight"]) @ self.output.T
