"""The values in a GGUF header that a loader asserts on, divides by or sizes buffers
from, checked before llama.cpp (or the MLX loader) sees the file.

llama.cpp aborts the whole process (GGML_ASSERT) on a block count of 0 or over its
layer limit, an expert count over its limit, a duplicated vocabulary entry, or a
context it cannot fit one output into; our own code would divide by a zero alignment or
turn a NaN context length into an integer. Each check here turns one of those into a
one-line `ModelFileError` naming the key and its value.

    info = check_loadable(path)        # inspect_gguf plus every check a load needs
"""

from __future__ import annotations

import os

from localllm.errors import ModelFileError
from localllm.types import ModelInfo

# llama.cpp's own limits (LLAMA_MAX_LAYERS, LLAMA_MAX_EXPERTS in llama-hparams.h).
MAX_LAYERS = 512
MAX_EXPERTS = 512
# The smallest context a model can have: llama.cpp cannot fit its outputs into less,
# and the CLI refuses a smaller --ctx-size.
MIN_CONTEXT = 16
MAX_DIMENSION = 1 << 20
MAX_VOCAB = 1 << 24


def _is_int(value) -> bool:
    return type(value) is int  # not bool, not a skipped array's length


def _bad(path, key: str, value, expected: str) -> ModelFileError:
    shown = f"an array of {int(value)} items" if isinstance(value, int) and not _is_int(value) and not isinstance(value, bool) \
        else ("an array" if isinstance(value, list) else repr(value)[:60])
    return ModelFileError(f"{path}: the GGUF header's {key} is {shown}, but must be {expected}: "
                          "the file is corrupted or was written wrongly; download it again or re-convert it")


def _integer(path, meta: dict, key: str, lo: int, hi: int, required: bool = False, per_layer: bool = False) -> None:
    if key not in meta:
        if required:
            raise ModelFileError(f"{path}: the GGUF header has no {key}: the file is not a complete model")
        return
    value = meta[key]
    if per_layer and isinstance(value, list):  # some architectures give one value per layer
        if all(_is_int(v) and lo <= v <= hi for v in value):
            return
    elif _is_int(value) and lo <= value <= hi:
        return
    raise _bad(path, key, value, f"an integer from {lo} to {hi}")


def check_header_values(path, meta: dict, arch: str) -> None:
    """Types and ranges of the header values loaders compute with."""
    a = f"{arch}."
    _integer(path, meta, "general.file_type", 0, 1 << 16)
    _integer(path, meta, a + "context_length", MIN_CONTEXT, 1 << 31)
    _integer(path, meta, a + "embedding_length", 1, MAX_DIMENSION)
    _integer(path, meta, a + "block_count", 1, MAX_LAYERS)
    _integer(path, meta, a + "feed_forward_length", 0, MAX_DIMENSION, per_layer=True)
    _integer(path, meta, a + "attention.head_count", 0, 1 << 14, per_layer=True)
    _integer(path, meta, a + "attention.head_count_kv", 0, 1 << 14, per_layer=True)
    _integer(path, meta, a + "attention.key_length", 0, MAX_DIMENSION)
    _integer(path, meta, a + "attention.value_length", 0, MAX_DIMENSION)
    _integer(path, meta, a + "expert_count", 0, MAX_EXPERTS)
    _integer(path, meta, a + "expert_used_count", 0, meta.get(a + "expert_count", 0)
             if _is_int(meta.get(a + "expert_count", 0)) else 0)
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None:
        if not isinstance(tokens, (int, list)) or isinstance(tokens, bool) or _is_int(tokens):
            raise _bad(path, "tokenizer.ggml.tokens", tokens, "an array of token texts")
        n = len(tokens) if isinstance(tokens, list) else int(tokens)
        if not 1 <= n <= MAX_VOCAB:
            raise ModelFileError(f"{path}: the vocabulary (tokenizer.ggml.tokens) has {n} tokens: the file is "
                                 "corrupted; download it again or re-convert it")
        duplicate = _first_duplicate(tokens)
        if duplicate is not None:
            raise ModelFileError(f"{path}: the vocabulary lists the token {duplicate[:40]!r} twice, which llama.cpp "
                                 "cannot load: the file is corrupted; download it again or re-convert it")
        texts = set(tokens) if isinstance(tokens, list) else getattr(tokens, "texts", None)
        if texts is not None:
            if not isinstance(tokens, list):
                tokens.texts = None  # read once; not kept with the model's metadata
            missing = _missing_byte_tokens(meta, texts)
            if missing:
                raise ModelFileError(f"{path}: the SentencePiece vocabulary lacks the byte token {missing}, which "
                                     "llama.cpp needs for text outside the vocabulary: the file is corrupted; "
                                     "download it again or re-convert it")
        for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
            other = meta.get(key)
            if other is not None and (_is_int(other) or isinstance(other, bool) or
                                      (len(other) if isinstance(other, list) else int(other)) != n):
                raise _bad(path, key, other, f"an array of {n} items, one per token")


def _missing_byte_tokens(meta: dict, texts: set) -> str | None:
    """llama.cpp's SentencePiece tokenizer spells an unknown character as byte tokens
    <0x00>..<0xFF> and aborts when one is missing; a vocabulary with some must have all."""
    if meta.get("tokenizer.ggml.model") != "llama" or "<0x0A>" not in texts and "<0x00>" not in texts:
        return None
    return next((f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in texts), None)


def _first_duplicate(tokens) -> str | None:
    if isinstance(tokens, list):
        seen: set = set()
        for t in tokens:
            if t in seen:
                return str(t)
            seen.add(t)
        return None
    return getattr(tokens, "duplicate", None)


def supported_gguf_architectures() -> frozenset[str]:
    from gguf.constants import MODEL_ARCH_NAMES

    return frozenset(MODEL_ARCH_NAMES.values())


def require_weights(info: ModelInfo) -> None:
    """Refuse a vocabulary-only GGUF (no tensors) where a model is to be loaded."""
    if info.n_params == 0:
        raise ModelFileError(f"{info.path}: holds only a vocabulary, no weights: give the model's full GGUF file")


def check_loadable(path: str | os.PathLike) -> ModelInfo:
    """Everything `load` would refuse or crash on, found from the header alone: what
    `inspect_gguf` checks, plus weights present and a known architecture."""
    from localllm.formats.gguf import inspect_gguf

    info = inspect_gguf(path)
    require_weights(info)
    if info.architecture not in supported_gguf_architectures():
        raise ModelFileError(
            f"{path}: unsupported model architecture {info.architecture[:60]!r}: "
            "llama.cpp cannot run it; pick a model of a supported family (llama, qwen2, gemma2, phi3, ...)"
        )
    if info.vocab_size == 0:
        raise ModelFileError(f"{path}: has no vocabulary (tokenizer.ggml.tokens): give a GGUF file with its tokenizer")
    return info

