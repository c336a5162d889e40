"""Small GGUF models the tests build for what the shared models lack, written with the
`gguf` package and cached per test session (never in the repo):

- sentence embeddings: stories260K or SmolLM2 (real trained weights) with pooling
  metadata (`llama.pooling_type`: mean, CLS or last), so llama.cpp treats them as
  embedding models, and a tiny random BERT (bidirectional, WordPiece, CLS pooling);
- fill-in-the-middle: tiny random-weight llamas whose vocabularies follow the
  Qwen2.5-Coder convention (SmolLM2's GPT-2-style BPE vocabulary plus `<|fim_prefix|>`,
  `<|fim_suffix|>`, `<|fim_middle|>`, `<|fim_pad|>`, `<|repo_name|>`, `<|file_sep|>`) and
  the CodeLlama one (the Llama 2 SentencePiece vocabulary plus `▁<PRE>`, `▁<SUF>`,
  `▁<MID>`, `▁<EOT>` at CodeLlama's ids), with or without the
  `tokenizer.ggml.fim_*_token_id` metadata.

Random weights write nonsense, which is fine: these models check token layouts, prefix
reuse and pooling, never text quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

POOLING = {"none": 0, "mean": 1, "cls": 2, "last": 3}

QWEN_FIM_TEXTS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
CODELLAMA_FIM_IDS = {"▁<PRE>": 32007, "▁<SUF>": 32008, "▁<MID>": 32009, "▁<EOT>": 32010}
CODELLAMA_VOCAB = 32016
CONTROL, UNUSED = 3, 5  # gguf token types


def _fields(reader) -> dict:
    """name -> (value, type, sub_type) of every real key of a GGUF file."""
    import gguf

    out = {}
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == gguf.Keys.General.ARCHITECTURE:
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        out[f.name] = (f.contents(), f.types[0], sub)
    return out


def _write(path: Path, arch: str, fields: dict, tensors: list[tuple[str, np.ndarray, object]]) -> Path:
    import gguf

    tmp = path.with_suffix(".partial")
    w = gguf.GGUFWriter(str(tmp), arch)
    for name, (value, vtype, sub) in fields.items():
        w.add_key_value(name, value, vtype, sub_type=sub)
    for name, data, raw_type in tensors:
        w.add_tensor(name, data, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def with_pooling(src: Path, folder: Path, pooling: str) -> Path:
    """A copy of a llama-architecture GGUF (stories260K, SmolLM2) with `llama.pooling_type`
    set: an embedding model with real weights, still a generative model too."""
    import gguf

    out = folder / f"{src.stem}-pool-{pooling}.gguf"
    if out.exists():
        return out
    reader = gguf.GGUFReader(str(src))
    fields = _fields(reader)
    fields["llama.pooling_type"] = (POOLING[pooling], gguf.GGUFValueType.UINT32, None)
    tensors = [(t.name, np.asarray(t.data), t.tensor_type) for t in reader.tensors]
    return _write(out, "llama", fields, tensors)


def _tiny_llama_tensors(vocab: int, dim: int = 64, n_layers: int = 1, ffn: int = 128, seed: int = 0):
    """Random F16 weights of a 1-layer llama; the output head is tied to the embeddings."""
    import gguf

    rng = np.random.default_rng(seed)
    f16, f32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32

    def rand(*dims):  # numpy order: (out, in)
        return (rng.standard_normal(dims, dtype=np.float32) * 0.05).astype(np.float16)

    tensors = [("token_embd.weight", rand(vocab, dim), f16), ("output_norm.weight", np.ones(dim, np.float32), f32)]
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", np.ones(dim, np.float32), f32),
            (p + "attn_q.weight", rand(dim, dim), f16), (p + "attn_k.weight", rand(dim, dim), f16),
            (p + "attn_v.weight", rand(dim, dim), f16), (p + "attn_output.weight", rand(dim, dim), f16),
            (p + "ffn_norm.weight", np.ones(dim, np.float32), f32),
            (p + "ffn_gate.weight", rand(ffn, dim), f16), (p + "ffn_up.weight", rand(ffn, dim), f16),
            (p + "ffn_down.weight", rand(dim, ffn), f16),
        ]
    return tensors


def _llama_fields(vocab: int, dim: int = 64, n_layers: int = 1, ffn: int = 128, heads: int = 4) -> dict:
    import gguf

    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    return {
        "general.name": ("tiny-fim-test", gguf.GGUFValueType.STRING, None),
        "llama.context_length": (2048, u32, None),
        "llama.embedding_length": (dim, u32, None),
        "llama.block_count": (n_layers, u32, None),
        "llama.feed_forward_length": (ffn, u32, None),
        "llama.attention.head_count": (heads, u32, None),
        "llama.attention.head_count_kv": (heads, u32, None),
        "llama.rope.dimension_count": (dim // heads, u32, None),
        "llama.attention.layer_norm_rms_epsilon": (1e-5, f32, None),
        "llama.vocab_size": (vocab, u32, None),
        "general.file_type": (1, u32, None),
    }


def qwen_coder_style(smollm: Path, folder: Path) -> Path:
    """A tiny llama whose vocabulary follows Qwen2.5-Coder's FIM convention (BPE, no BOS),
    with the FIM ids in the GGUF metadata. Returns the path; the ids are the last six."""
    import gguf

    out = folder / "tiny-qwen-coder-style.gguf"
    if out.exists():
        return out
    reader = gguf.GGUFReader(str(smollm))
    src = _fields(reader)
    tokens = list(src["tokenizer.ggml.tokens"][0]) + list(QWEN_FIM_TEXTS)
    types = list(src["tokenizer.ggml.token_type"][0]) + [CONTROL] * len(QWEN_FIM_TEXTS)
    first = len(tokens) - len(QWEN_FIM_TEXTS)
    ids = dict(zip(QWEN_FIM_TEXTS, range(first, len(tokens))))
    arr, s, u32, b = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.BOOL
    fields = _llama_fields(len(tokens))
    fields.update({k: src[k] for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.merges",
                                       "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id")})
    fields.update({
        "tokenizer.ggml.tokens": (tokens, arr, s),
        "tokenizer.ggml.token_type": (types, arr, gguf.GGUFValueType.INT32),
        "tokenizer.ggml.add_bos_token": (False, b, None),
        "tokenizer.ggml.fim_pre_token_id": (ids["<|fim_prefix|>"], u32, None),
        "tokenizer.ggml.fim_suf_token_id": (ids["<|fim_suffix|>"], u32, None),
        "tokenizer.ggml.fim_mid_token_id": (ids["<|fim_middle|>"], u32, None),
        "tokenizer.ggml.fim_pad_token_id": (ids["<|fim_pad|>"], u32, None),
        "tokenizer.ggml.fim_rep_token_id": (ids["<|repo_name|>"], u32, None),
        "tokenizer.ggml.fim_sep_token_id": (ids["<|file_sep|>"], u32, None),
    })
    return _write(out, "llama", fields, _tiny_llama_tensors(len(tokens)))


def codellama_style(llama_vocab: Path, folder: Path, *, metadata: bool = True) -> Path:
    """A tiny llama with CodeLlama's vocabulary layout: Llama 2 SentencePiece plus 16
    tokens, `▁<PRE>` `▁<SUF>` `▁<MID>` `▁<EOT>` at 32007-32010 (the rest unused).
    `metadata=False` leaves out the fim_* ids, so they must be found by their text."""
    import gguf

    out = folder / f"tiny-codellama-style{'' if metadata else '-nometa'}.gguf"
    if out.exists():
        return out
    reader = gguf.GGUFReader(str(llama_vocab))
    src = _fields(reader)
    tokens = list(src["tokenizer.ggml.tokens"][0])
    scores = list(src["tokenizer.ggml.scores"][0])
    types = list(src["tokenizer.ggml.token_type"][0])
    by_id = {v: k for k, v in CODELLAMA_FIM_IDS.items()}
    for i in range(len(tokens), CODELLAMA_VOCAB):
        tokens.append(by_id.get(i, f"<unused{i}>"))
        scores.append(0.0)
        types.append(CONTROL if i in by_id else UNUSED)
    arr, s, u32 = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32
    fields = _llama_fields(len(tokens))
    fields.update({k: src[k] for k in ("tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
                                       "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id")})
    fields.update({
        "tokenizer.ggml.tokens": (tokens, arr, s),
        "tokenizer.ggml.scores": (scores, arr, gguf.GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": (types, arr, gguf.GGUFValueType.INT32),
    })
    if metadata:
        fields.update({
            "tokenizer.ggml.fim_pre_token_id": (CODELLAMA_FIM_IDS["▁<PRE>"], u32, None),
            "tokenizer.ggml.fim_suf_token_id": (CODELLAMA_FIM_IDS["▁<SUF>"], u32, None),
            "tokenizer.ggml.fim_mid_token_id": (CODELLAMA_FIM_IDS["▁<MID>"], u32, None),
            "tokenizer.ggml.eot_token_id": (CODELLAMA_FIM_IDS["▁<EOT>"], u32, None),
        })
    return _write(out, "llama", fields, _tiny_llama_tensors(len(tokens)))


BERT_WORDS = ("the", "cat", "dog", "sat", "ran", "on", "mat", "park", "once", "upon", "time", "there",
              "was", "little", "girl", "play", "with", "her", "friends", "every", "day", "liked", "to", "in")


def bert_style(folder: Path, *, dim: int = 64, n_layers: int = 2, heads: int = 4, ffn: int = 128,
               context: int = 512, seed: int = 1) -> Path:
    """A tiny random-weight BERT (bidirectional encoder, WordPiece vocabulary, CLS pooling),
    the family most sentence-embedding models (bge, all-MiniLM, nomic) belong to. The
    vocabulary is llama.cpp's WPM layout: word starts marked with ▁, [CLS] ... [SEP]."""
    import gguf

    out = folder / "tiny-bert-cls.gguf"
    if out.exists():
        return out
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"▁{w}" for w in BERT_WORDS),
              *(f"▁{c}" for c in letters), *letters, "▁.", "▁,"]
    types = [CONTROL] * 5 + [1] * (len(tokens) - 5)
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    f16, f32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32

    def rand(*dims):
        return (rng.standard_normal(dims, dtype=np.float32) * 0.1).astype(np.float16)

    def vec(n, scale=0.02):
        return (rng.standard_normal(n, dtype=np.float32) * scale).astype(np.float32)

    tensors = [("token_embd.weight", rand(vocab, dim), f16), ("token_types.weight", vec(2 * dim).reshape(2, dim), f32),
               ("position_embd.weight", rand(context, dim), f16),
               ("token_embd_norm.weight", np.ones(dim, np.float32), f32), ("token_embd_norm.bias", vec(dim), f32)]
    for i in range(n_layers):
        p = f"blk.{i}."
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                            ("attn_output", (dim, dim)), ("ffn_up", (ffn, dim)), ("ffn_down", (dim, ffn))):
            tensors += [(p + name + ".weight", rand(*shape), f16), (p + name + ".bias", vec(shape[0]), f32)]
        for norm in ("attn_output_norm", "layer_output_norm"):
            tensors += [(p + norm + ".weight", np.ones(dim, np.float32), f32), (p + norm + ".bias", vec(dim), f32)]
    arr, s, u32, f = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING, gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    fields = {
        "general.name": ("tiny-bert-test", s, None),
        "bert.context_length": (context, u32, None),
        "bert.embedding_length": (dim, u32, None),
        "bert.feed_forward_length": (ffn, u32, None),
        "bert.block_count": (n_layers, u32, None),
        "bert.attention.head_count": (heads, u32, None),
        "bert.attention.layer_norm_epsilon": (1e-12, f, None),
        "bert.attention.causal": (False, gguf.GGUFValueType.BOOL, None),
        "bert.pooling_type": (POOLING["cls"], u32, None),
        "general.file_type": (1, u32, None),
        "tokenizer.ggml.model": ("bert", s, None),
        "tokenizer.ggml.tokens": (tokens, arr, s),
        "tokenizer.ggml.token_type": (types, arr, gguf.GGUFValueType.INT32),
        "tokenizer.ggml.token_type_count": (2, u32, None),
        "tokenizer.ggml.bos_token_id": (2, u32, None),
        "tokenizer.ggml.seperator_token_id": (3, u32, None),
        "tokenizer.ggml.unknown_token_id": (1, u32, None),
        "tokenizer.ggml.padding_token_id": (0, u32, None),
        "tokenizer.ggml.mask_token_id": (4, u32, None),
    }
    return _write(out, "bert", fields, tensors)
