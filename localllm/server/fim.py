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


def _from_vocabulary(backend) -> FimTokens | None:
    """Each role's known spellings, tokenized as special text: one token, and a control
    token where the backend can tell, or it is not a FIM token."""
    is_control = getattr(backend, "is_control", None)
    ids = {}
    for role, texts in _KNOWN_TEXTS.items():
        for text in texts:
            try:
                tokens = backend.tokenize(text, add_bos=False, special=True)
            except Exception:
                continue
            if len(tokens) == 1 and (is_control is None or is_control(tokens[0]) or _user_defined(backend, tokens[0], text)):
                ids[role] = tokens[0]
                break
        else:
            return None
    return FimTokens(**ids)


def _user_defined(backend, token: int, text: str) -> bool:
    # Some GGUFs mark FIM tokens "user defined" rather than control; their own text
    # then spells the whole marker.
    token_text = getattr(backend, "token_text", None)
    return token_text is not None and token_text(token) == text


def find_fim_tokens(model) -> FimTokens | None:
    """The FIM token ids of a loaded model (`localllm.runtime.LoadedModel`), if any."""
    cached = getattr(model, "_server_fim_tokens", False)
    if cached is not False:
        return cached
    backend = model.tokenizer
    found = _from_metadata(model.info.metadata, backend.vocab_size) or _from_vocabulary(backend)
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
    backend = model.tokenizer
    tokens = [backend.bos_id] if getattr(backend, "add_bos", False) and backend.bos_id is not None else []
    tokens.append(fim.pre)
    tokens += backend.tokenize(prefix, add_bos=False, special=False) if prefix else []
    tokens.append(fim.suf)
    tokens += backend.tokenize(suffix, add_bos=False, special=False) if suffix else []
    tokens.append(fim.mid)
    return tokens
