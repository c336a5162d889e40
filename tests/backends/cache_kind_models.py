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

from tests.models.builders import TestShape, add_vocab, stories_vocab, write_f32

SLIDING_WINDOW = 4
N_LAYERS = 7  # layers 0-4 and 6 slide, layer 5 is global (llama.cpp's gemma3 pattern of 6)


# Gemma 3's shape in `tests/models/builders.py` at tiny dims (F32: nothing to quantize),
# its output untied (a random tied model mostly predicts the token it just read).
GEMMA3_WINDOW = TestShape("gemma3-window4", "gemma3", dim=64, n_layers=N_LAYERS, n_heads=4, n_kv_heads=2,
                          head_dim=16, ffn=128, rope_base=1_000_000.0, sliding_window=SLIDING_WINDOW)


def write_gemma3(path: Path, models_dir: Path) -> Path:
    """Write the Gemma 3 model to `path` (atomically) and return it."""
    tmp = path.with_suffix(".partial")
    write_f32(GEMMA3_WINDOW, tmp, models_dir)
    os.replace(tmp, path)
    return path


def write_mamba(path: Path, models_dir: Path, seed: int = 0) -> Path:
    """A tiny random Mamba (a recurrent state, no KV cache at all), written like
    `write_gemma3`: for checking that such a state is never cut back."""
    import gguf

    vocab_fields = stories_vocab(models_dir)
    vocab, dim, inner, state, conv, dt_rank = len(vocab_fields[0]), 64, 128, 8, 4, 4
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
    add_vocab(w, vocab_fields)

    def rand(*dims, scale=1.0):
        return (rng.standard_normal(dims, dtype=np.float32) * scale / np.sqrt(dims[-1])).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, dim))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output.weight", rand(vocab, dim, scale=4.0))
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
