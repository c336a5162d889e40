"""Fill-in-the-middle prompts: find a model's FIM tokens and lay out prefix and suffix.

The token ids come from the GGUF metadata (`tokenizer.ggml.fim_{pre,suf,mid}_token_id`,
or the older `prefix/suffix/middle_token_id` keys) and, failing that, from the special
tokens code models are known to use (Qwen2.5-Coder and StarCoder `<|fim_prefix|>`,
DeepSeek-Coder `<｜fim▁begin｜>`, CodeGemma `<|fim_prefix|>`, CodeLlama `<PRE>`).
A model with none of them cannot do FIM: the caller refuses the request, never guesses.

Layout is prefix-suffix-middle, as llama.cpp's infill does it:
[BOS] <PRE> prefix <SUF> suffix <MID> → the model writes the middle.
"""

from __future__ import annotations

from dataclasses import dataclass

from localllm.tokenizer.protocol import Tokenizer

_METADATA_KEYS = {
    "pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
}
_KNOWN_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>"),
}


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int


def _from_metadata(metadata: dict, vocab_size: int) -> FimTokens | None:
    ids = {}
    for role, keys in _METADATA_KEYS.items():
        for key in keys:
            value = metadata.get(key)
            if isinstance(value, int) and 0 <= value < vocab_size:
                ids[role] = value
                break
        else:
            return None
    return FimTokens(**ids)


def _from_vocabulary(vocab: Tokenizer) -> FimTokens | None:
    """Each role's known spellings, tokenized as special text: one token, and a control
    token (or a user-defined one spelling the whole marker), or it is not a FIM token."""
    ids = {}
    for role, texts in _KNOWN_TEXTS.items():
        for text in texts:
            tokens = vocab.encode(text, add_bos=False, special=True)
            if len(tokens) == 1 and (vocab.is_control(tokens[0]) or _user_defined(vocab, tokens[0], text)):
                ids[role] = tokens[0]
                break
        else:
            return None
    return FimTokens(**ids)


def _user_defined(vocab: Tokenizer, token: int, text: str) -> bool:
    # Some GGUFs mark FIM tokens "user defined" rather than control; their own text
    # then spells the whole marker.
    return vocab.token_text(token) == text


def find_fim_tokens(model) -> FimTokens | None:
    """The FIM token ids of a loaded model (`localllm.runtime.LoadedModel`), if any."""
    cached = getattr(model, "_server_fim_tokens", False)
    if cached is not False:
        return cached
    vocab = model.tokenizer
    found = _from_metadata(model.info.metadata, vocab.vocab_size) or _from_vocabulary(vocab)
    try:
        model._server_fim_tokens = found
    except AttributeError:
        pass
    return found


def infill_tokens(model, prefix: str, suffix: str) -> list[int] | None:
    """The prompt tokens for filling between `prefix` and `suffix`; None without FIM tokens."""
    fim = find_fim_tokens(model)
    if fim is None:
        return None
    vocab = model.tokenizer
    tokens = [vocab.bos_id] if vocab.add_bos and vocab.bos_id is not None else []
    tokens.append(fim.pre)
    tokens += vocab.encode(prefix, add_bos=False, special=False) if prefix else []
    tokens.append(fim.suf)
    tokens += vocab.encode(suffix, add_bos=False, special=False) if suffix else []
    tokens.append(fim.mid)
    return tokens
