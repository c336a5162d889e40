"""Tiny random-weight models of the cache kinds other than full attention, for the cache
reuse tests: a Gemma 3 (sliding-window layers) and a Mamba (a recurrent state).

Gemma 3 alternates sliding-window attention layers (five of every six) with global ones.
With a window of a few tokens, any ordinary prompt runs past it, so a cache that keeps
only the last window on its sliding layers is exercised by every test. The vocabulary is
stories260K's (512 SentencePiece pieces), so the file is small and prompts tokenize like
text. Weights are random (seeded): fine for exactness checks, where the point is that two
ways of computing the same thing agree token for token.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SLIDING_WINDOW = 4
N_LAYERS = 7  # layers 0-4 and 6 slide, layer 5 is global (llama.cpp's gemma3 pattern of 6)


def _stories_vocab(stories: Path):
    import gguf

    r = gguf.GGUFReader(str(stories))

    def field(name):
        f = r.fields[name]
        if f.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]) for i in f.data]
        return [f.parts[i][0].item() for i in f.data]

    return field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")


def _no_eos(output: np.ndarray) -> np.ndarray:
    """Zero the BOS and EOS rows of the output matrix: their logits stay 0 while the
    largest of 510 random ones is well above it, so greedy text never ends early."""
    output[[1, 2]] = 0.0
    return output


def write_gemma3(path: Path, stories: Path, window: int = SLIDING_WINDOW, seed: int = 0) -> Path:
    """Write the model to `path` (atomically) and return it."""
    import gguf

    tokens, scores, types = _stories_vocab(stories)
    vocab, dim, n_head, n_head_kv, head, ffn = len(tokens), 64, 4, 2, 16, 128
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "gemma3")
    w.add_name("random-gemma3-tiny")
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head)
    w.add_value_length(head)
    w.add_sliding_window(window)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(*dims, scale=0.5):  # numpy order (out, in); large enough that logits spread
        return (rng.standard_normal(dims, dtype=np.float32) * scale / np.sqrt(dims[-1])).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, dim, scale=1.0))
    w.add_tensor("output_norm.weight", norm(dim))
    # Untied: with tied embeddings a random model mostly predicts the token it just read.
    w.add_tensor("output.weight", _no_eos(rand(vocab, dim, scale=4.0)))
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(dim))
        w.add_tensor(p + "attn_q.weight", rand(n_head * head, dim, scale=2.0))
        w.add_tensor(p + "attn_k.weight", rand(n_head_kv * head, dim, scale=2.0))
        w.add_tensor(p + "attn_v.weight", rand(n_head_kv * head, dim))
        w.add_tensor(p + "attn_q_norm.weight", norm(head))
        w.add_tensor(p + "attn_k_norm.weight", norm(head))
        w.add_tensor(p + "attn_output.weight", rand(dim, n_head * head))
        w.add_tensor(p + "post_attention_norm.weight", norm(dim))
        w.add_tensor(p + "ffn_norm.weight", norm(dim))
        w.add_tensor(p + "ffn_gate.weight", rand(ffn, dim))
        w.add_tensor(p + "ffn_up.weight", rand(ffn, dim))
        w.add_tensor(p + "ffn_down.weight", rand(dim, ffn))
        w.add_tensor(p + "post_ffw_norm.weight", norm(dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def write_mamba(path: Path, stories: Path, seed: int = 0) -> Path:
    """A tiny random Mamba (a recurrent state, no KV cache at all), written like
    `write_gemma3`: for checking that such a state is never cut back."""
    import gguf

    tokens, scores, types = _stories_vocab(stories)
    vocab, dim, inner, state, conv, dt_rank = len(tokens), 64, 128, 8, 4, 4
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), "mamba")
    w.add_name("random-mamba-tiny")
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_block_count(2)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_ssm_conv_kernel(conv)
    w.add_ssm_inner_size(inner)
    w.add_ssm_state_size(state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_file_type(0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(*dims, scale=1.0):
        return (rng.standard_normal(dims, dtype=np.float32) * scale / np.sqrt(dims[-1])).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, dim))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output.weight", _no_eos(rand(vocab, dim, scale=4.0)))
    for i in range(2):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(p + "ssm_in.weight", rand(2 * inner, dim))
        w.add_tensor(p + "ssm_conv1d.weight", rand(inner, conv))
        w.add_tensor(p + "ssm_conv1d.bias", np.zeros(inner, dtype=np.float32))
        w.add_tensor(p + "ssm_x.weight", rand(dt_rank + 2 * state, inner))
        w.add_tensor(p + "ssm_dt.weight", rand(inner, dt_rank))
        w.add_tensor(p + "ssm_dt.bias", np.zeros(inner, dtype=np.float32))
        w.add_tensor(p + "ssm_a", -np.tile(np.arange(1, state + 1, dtype=np.float32), (inner, 1)))
        w.add_tensor(p + "ssm_d", np.ones(inner, dtype=np.float32))
        w.add_tensor(p + "ssm_out.weight", rand(dim, inner))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path
