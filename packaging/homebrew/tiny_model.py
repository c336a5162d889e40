"""Write a tiny random-weight llama GGUF for the Homebrew formula's `test do`.

A formula test runs offline, so it cannot pull a model: this script makes one with the
`gguf` and `numpy` packages the formula installs. The vocabulary is SentencePiece-style
("llama"): <unk>, <s>, </s> and the 256 byte tokens, so any prompt tokenizes (byte
fallback). The weights are random, except that only the tokens of lowercase letters and
the space get non-zero output weights: whatever it writes is plain lowercase noise, which
the test can check, never control bytes or broken UTF-8.

The generator embeds this file verbatim in localllm.rb; tests run it here too.
Usage: python tiny_model.py OUT.gguf
"""

import sys

import gguf
import numpy as np

DIM, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 256
FIRST_BYTE = 3  # token id of <0x00>
WRITTEN = b"abcdefghijklmnopqrstuvwxyz "  # the bytes the model can write


def vocabulary():
    """(pieces, scores, token types) in llama.cpp's SentencePiece layout."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, byte
    return pieces, [0.0] * len(pieces), types


def write(path):
    pieces, scores, types = vocabulary()
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(DIM)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def weight(*shape):  # gguf shapes are numpy order: (out, in)
        return (rng.standard_normal(shape, dtype=np.float32) * 0.1).astype(np.float32)

    kv = DIM // HEADS * KV_HEADS
    w.add_tensor("token_embd.weight", weight(len(pieces), DIM))
    w.add_tensor("output_norm.weight", np.ones(DIM, dtype=np.float32))
    # A token whose output row is zero has logit 0; the largest of 27 random logits is
    # above 0 (all but certainly), so greedy decoding only ever picks a written byte.
    output = np.zeros((len(pieces), DIM), dtype=np.float32)
    rows = [FIRST_BYTE + b for b in WRITTEN]
    output[rows] = weight(len(rows), DIM)
    w.add_tensor("output.weight", output)
    for i in range(LAYERS):
        block = f"blk.{i}."
        w.add_tensor(block + "attn_norm.weight", np.ones(DIM, dtype=np.float32))
        w.add_tensor(block + "attn_q.weight", weight(DIM, DIM))
        w.add_tensor(block + "attn_k.weight", weight(kv, DIM))
        w.add_tensor(block + "attn_v.weight", weight(kv, DIM))
        w.add_tensor(block + "attn_output.weight", weight(DIM, DIM))
        w.add_tensor(block + "ffn_norm.weight", np.ones(DIM, dtype=np.float32))
        w.add_tensor(block + "ffn_gate.weight", weight(FFN, DIM))
        w.add_tensor(block + "ffn_up.weight", weight(FFN, DIM))
        w.add_tensor(block + "ffn_down.weight", weight(DIM, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tiny_model.py OUT.gguf")
    write(sys.argv[1])
