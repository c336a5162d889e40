"""Build MLX model folders from the shared GGUF models, the way mlx-lm lays them out:
config.json (Hugging Face llama fields, plus `quantization` when quantized), one
model.safetensors with Hugging Face tensor names (Q/K rows un-permuted back from GGUF's
llama order), the tokenizer files and tokenizer_config.json with the chat template.

A quantized folder holds the GGUF's own quantized values in mlx-lm's layout (affine,
`X.weight` packed with `X.scales` and `X.biases`, `quantization` in config.json with a
per-module override): SmolLM2's Q4_1 matrices as 4-bit groups of 32 and its Q8_0
embedding as 8-bit, repacked exactly (`localllm.models.gguf_repack`, itself checked bit
for bit against gguf's dequantizer), so the folder and the GGUF hold the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np

LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's converter: GGUF llama Q/K rows pair adjacent dims per head;
    Hugging Face's rotate the two halves."""
    out, dim = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, dim).swapaxes(1, 2).reshape(out, dim)


def _hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, stem, suffix = name.split(".")
    return f"model.layers.{layer}.{LAYER_NAMES[stem]}.{suffix}"


def _smollm_tokenizer_json(reader, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import AddedToken

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    tok.save(str(out))


def build_folder(gguf_path: Path, out: Path, quantized: bool = False, tokenizer_model: Path | None = None) -> Path:
    """An MLX folder holding `gguf_path`'s weights: dequantized to float32, or
    (`quantized`) its quantized matrices as MLX affine weights."""
    import mlx.core as mx

    from localllm.models.gguf_repack import repack
    from localllm.models.weights import AffineWeight

    if out.exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    r = gguf.GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in r.fields.items() if len(f.data) <= 64 and not k.startswith("GGUF.")}
    a = meta["general.architecture"]
    n_heads, n_kv = meta[f"{a}.attention.head_count"], meta[f"{a}.attention.head_count_kv"]
    arrays, names, bits_of = {}, {t.name for t in r.tensors}, {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        heads = n_heads if t.name.endswith("attn_q.weight") else n_kv if t.name.endswith("attn_k.weight") else 0
        fix = (lambda a: _unpermute(a, heads)) if heads else (lambda a: a)  # rows only: packed rows too
        name = _hf_name(t.name)
        weight = repack(t.data, t.tensor_type, shape, t.name) if quantized and len(shape) == 2 else None
        if isinstance(weight, AffineWeight):
            stem = name.rsplit(".", 1)[0]
            for suffix, part in (("weight", weight.w), ("scales", weight.scales), ("biases", weight.biases)):
                arrays[f"{stem}.{suffix}"] = mx.array(fix(np.array(part)))
            bits_of[stem] = weight.bits
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        arrays[name] = mx.array(fix(w))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": meta[f"{a}.embedding_length"],
        "num_hidden_layers": meta[f"{a}.block_count"],
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "intermediate_size": meta[f"{a}.feed_forward_length"],
        "vocab_size": int(arrays["model.embed_tokens.weight"].shape[0]),
        "rms_norm_eps": float(meta[f"{a}.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get(f"{a}.rope.freq_base", 10000.0)),
        "max_position_embeddings": meta[f"{a}.context_length"],
        "tie_word_embeddings": "output.weight" not in names,
    }
    if bits_of:
        common = max(set(bits_of.values()), key=list(bits_of.values()).count)
        config["quantization"] = {"group_size": 32, "bits": common}
        config["quantization"].update({stem: {"group_size": 32, "bits": b} for stem, b in bits_of.items() if b != common})
    mx.save_safetensors(str(tmp / "model.safetensors"), arrays)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    tok_config = {"add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", True))}
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    for key, field in (("bos_token", "tokenizer.ggml.bos_token_id"), ("eos_token", "tokenizer.ggml.eos_token_id")):
        if field in meta:
            tok_config[key] = tokens[meta[field]]
    if "tokenizer.chat_template" in r.fields:
        tok_config["chat_template"] = r.fields["tokenizer.chat_template"].contents()
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    if tokenizer_model is not None:
        shutil.copy(tokenizer_model, tmp / "tokenizer.model")
    else:
        _smollm_tokenizer_json(r, tmp / "tokenizer.json")
    tmp.rename(out)
    return out
