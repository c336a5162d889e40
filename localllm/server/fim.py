"""Fill-in-the-middle prompts: find a model's FIM tokens and lay out prefix and suffix.

Each marker's id comes from the GGUF metadata (`tokenizer.ggml.fim_{pre,suf,mid,rep,sep}
_token_id`, or the older `prefix/suffix/middle_token_id`) and, failing that, from the
special tokens code models are known to use, the spellings llama.cpp itself looks for:
Qwen2.5-Coder and StarCoder `<|fim_prefix|>`, DeepSeek-Coder `<｜fim▁begin｜>`, CodeLlama
`▁<PRE>`, and the repository-level markers `<|repo_name|>` and `<|file_sep|>`. A model
without prefix, suffix and middle markers cannot do FIM: the caller refuses the request,
never guesses. Found fresh per request: a few short tokenizer calls, far cheaper than
the prompt they build.

Layout is prefix-suffix-middle, as the families are trained and llama.cpp lays it out:

    [BOS] <PRE> prefix <SUF> suffix <MID>            (OpenAI and Ollama `suffix`)

llama-server's `/infill` adds repository context where the vocabulary has the markers
(the pattern Qwen2.5-Coder was trained on), with llama.cpp's placeholder names:

    [BOS] <REPO>myproject\\n <SEP>file\\n text ... <SEP>filename\\n <PRE> prefix+typed <SUF> suffix <MID>

and "--- snippet ---" separators between context chunks where it has no file separator.
BOS, where the vocabulary uses one, comes first (llama.cpp puts the extra context in
front of it). On a SentencePiece vocabulary that puts a space before the first word
(CodeLlama's), the prefix keeps that space and the suffix does not: "<PRE> prefix
<SUF>suffix <MID>", as Meta's reference infilling encodes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from localllm.tokenizer.protocol import Tokenizer

_METADATA_KEYS = {
    "pre": ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    "suf": ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    "mid": ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
    "rep": ("tokenizer.ggml.fim_rep_token_id",),
    "sep": ("tokenizer.ggml.fim_sep_token_id",),
}
_KNOWN_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "▁<PRE>", "<PRE>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "▁<SUF>", "<SUF>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "▁<MID>", "<MID>"),
    "rep": ("<|repo_name|>", "<|fim_repo|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "sep": ("<|file_sep|>",),
}
# llama-server's placeholders for the repository and the file being edited.
REPO_NAME = "myproject"
CURRENT_FILE = "filename"
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"
# A character no vocabulary merges with its neighbours, to tokenize text "mid-sentence"
# (without a SentencePiece vocabulary's leading space), as Meta's CodeLlama code does.
_ANCHOR = "☺"


@dataclass(frozen=True)
class FimTokens:
    pre: int
    suf: int
    mid: int
    rep: int | None = None  # repository name marker
    sep: int | None = None  # file separator


@dataclass(frozen=True)
class InfillBudget:
    """llama-server's limits for `/infill`: the prefix keeps its last 3/4 of `batch`
    tokens, the suffix its first 1/4 (less the markers), the context chunks what is left
    of the context after `batch` and twice the reply."""

    n_ctx: int
    batch: int
    reply: int

    @classmethod
    def for_context(cls, n_ctx: int, reply: int | None) -> "InfillBudget":
        # llama-server's batch is 2048 by default; half the context where that is smaller.
        return cls(n_ctx, min(2048, n_ctx // 2), reply if reply and reply > 0 else n_ctx // 8)


@dataclass(frozen=True)
class InfillLayout:
    tokens: list[int]
    truncated: bool = False  # the budget cut the prefix, suffix or context chunks


def _control_id(vocab: Tokenizer, text: str) -> int | None:
    """The id of `text` when the vocabulary has it as one special token."""
    tokens = vocab.encode(text, add_bos=False, special=True)
    if len(tokens) != 1:
        return None
    # Some GGUFs mark FIM tokens "user defined" rather than control; their own text then
    # spells the whole marker.
    return tokens[0] if vocab.is_control(tokens[0]) or vocab.token_text(tokens[0]) == text else None


def _role_id(metadata: dict, tokenizer: Tokenizer, role: str) -> int | None:
    for key in _METADATA_KEYS[role]:
        value = metadata.get(key)
        if isinstance(value, int) and 0 <= value < tokenizer.vocab_size:
            return value
    for text in _KNOWN_TEXTS[role]:
        found = _control_id(tokenizer, text)
        if found is not None:
            return found
    return None


def find_fim_tokens(model) -> FimTokens | None:
    """The FIM token ids of a loaded model (`localllm.runtime.LoadedModel`), if it has them."""
    tokenizer, metadata = model.tokenizer, model.info.metadata
    ids = {role: _role_id(metadata, tokenizer, role) for role in _METADATA_KEYS}
    if ids["pre"] is None or ids["suf"] is None or ids["mid"] is None:
        return None
    return FimTokens(**ids)


def _text(vocab: Tokenizer, text: str, *, first_word_space: bool = True) -> list[int]:
    """Plain text to ids (special-token text stays text). `first_word_space=False` drops
    the space a SentencePiece vocabulary puts before the first word."""
    if not text:
        return []
    if first_word_space or not vocab.adds_space_prefix:
        return vocab.encode(text, add_bos=False, special=False)
    anchor = vocab.encode(_ANCHOR, add_bos=False, special=False)
    both = vocab.encode(_ANCHOR + text, add_bos=False, special=False)
    if both[:len(anchor)] == anchor:
        return both[len(anchor):]
    return vocab.encode(text, add_bos=False, special=False)


def _context_chunks(tokenizer: Tokenizer, fim: FimTokens, extra: Sequence[tuple[str, str]]) -> list[int]:
    out: list[int] = []
    if fim.rep is not None:
        out += [fim.rep, *_text(tokenizer, REPO_NAME + "\n")]
    for filename, text in extra:
        if fim.sep is not None:
            out += [fim.sep, *_text(tokenizer, filename + "\n")]
        else:
            out += _text(tokenizer, SNIPPET_SEPARATOR)
        out += _text(tokenizer, text)
    if fim.sep is not None:
        out += [fim.sep, *_text(tokenizer, CURRENT_FILE + "\n")]
    return out


def infill_tokens(model, prefix: str, suffix: str, *, typed: str = "", extra: Sequence[tuple[str, str]] = (),
                  repository: bool = False, budget: InfillBudget | None = None) -> InfillLayout | None:
    """The prompt for filling between `prefix` + `typed` and `suffix`; None without FIM
    tokens. `repository`: llama-server's layout, with the `extra` (filename, text) chunks
    and the repository markers; `budget` cuts prefix, suffix and chunks to fit."""
    fim = find_fim_tokens(model)
    if fim is None:
        return None
    tokenizer = model.tokenizer
    before = _text(tokenizer, prefix + typed)
    after = _text(tokenizer, suffix, first_word_space=False)
    chunks = _context_chunks(tokenizer, fim, extra) if repository else []
    truncated = False
    if budget is not None:
        keep_before = min(len(before), 3 * (budget.batch // 4))
        keep_after = min(len(after), max(0, budget.batch // 4 - 2))
        keep_chunks = min(len(chunks), max(0, budget.n_ctx - budget.batch - 2 * budget.reply))
        truncated = (keep_before, keep_after, keep_chunks) != (len(before), len(after), len(chunks))
        before = before[len(before) - keep_before:]
        after = after[:keep_after]
        chunks = chunks[len(chunks) - keep_chunks:]
    bos = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    return InfillLayout([*bos, *chunks, fim.pre, *before, fim.suf, *after, fim.mid], truncated)
