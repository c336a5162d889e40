"""Constrained decoding: which tokens may come next, from a JSON schema, any JSON object,
a Lark grammar or a regex, compiled against a vocabulary by llguidance.

Why llguidance (benchmarks/compare_grammar_libraries.py, this machine, SmolLM2's 49k
vocabulary and a 262k one): per-token mask + advance 16-35 us mean, compile under 1 ms
(it compiles lazily, so no schema waits seconds on a large vocabulary), every schema
feature we tried except `uniqueItems`, which it refuses by name instead of ignoring;
one 3 MB abi3 wheel per platform (macOS arm64, Linux x86_64/aarch64) and no
dependencies. xgrammar is faster per token (2-20 us) but requires torch and
transformers (5.7 GB here) and accepted a `uniqueItems` violation; outlines-core
precomputes an index per schema (0.2 s on 49k, 2-3 s on 262k tokens), has 13-30 ms
spikes inside free strings, and ignored integer `minimum`/`maximum`.

The pieces:
- `compiler_for(tokenizer)`: one `ConstraintCompiler` per vocabulary, kept while the
  vocabulary lives (building llguidance's token trie takes ~0.5 s for 49k tokens, ~4 s
  for 262k, so it happens once, at the first constrained request).
- `ConstraintCompiler.check(constraint)`: a `UserError` saying what is wrong with a
  schema or grammar, for frontends to refuse a request before it is queued.
- `ConstraintCompiler.matcher(constraint)`: a `TokenMatcher`, the state of one
  generation. `allows(token)` checks one token without computing the whole mask (the
  greedy fast path); `mask()` is the boolean mask of the next position; `accept(token)`
  advances; `rollback(n)` undoes the last n accepted tokens.

The `Sampler` applies a matcher: it masks the logits before penalties' effects reach the
candidates and advances the matcher with every token it picks. A producer therefore gets
the right mask at every position by sampling positions in order through its sampler:
speculative verification samples verified position i after the tokens before it were
accepted, so the mask at i is the one after them, and a rejected draft token is never
accepted. A verifier that checks draft tokens itself can use `sampler.constraint`
(`allows`, `mask`, `accept`, `rollback`).
"""

from __future__ import annotations

import json
import threading
import weakref

import numpy as np

from localllm.errors import UserError
from localllm.tokenizer.protocol import Tokenizer
from localllm.types import OutputConstraint

# llguidance marks a special (control) token's text with a leading 0xFF byte; grammars
# name them as <|im_end|> or by id as <[2]>.
_SPECIAL_MARK = b"\xff"


def grammar_text(constraint: OutputConstraint) -> str:
    """The constraint as an llguidance grammar (its JSON or Lark form)."""
    from llguidance import LLMatcher

    if constraint.kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_OPTIONS)
    if constraint.kind == "json_schema":
        try:
            schema = json.loads(constraint.text)
        except ValueError as e:
            raise UserError(f"the JSON schema is not valid JSON ({e})") from None
        if not isinstance(schema, (dict, bool)):
            raise UserError("the JSON schema must be an object")
        return LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    if constraint.kind == "lark":
        return LLMatcher.grammar_from_lark(constraint.text)
    if constraint.kind == "regex":
        return LLMatcher.grammar_from_regex(constraint.text)
    raise UserError(f"unknown output constraint {constraint.kind!r}")


# JSON as people write it: ", " and ": " between items, no other whitespace, so a model
# cannot spend its tokens on spaces and newlines.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class TokenMatcher:
    """One generation's position in its constraint."""

    def __init__(self, matcher, vocab_size: int):
        self._m = matcher
        self.vocab_size = vocab_size
        self._bits = np.zeros((vocab_size + 31) // 32, dtype=np.int32)

    def allows(self, token: int) -> bool:
        """Whether `token` may come next (without computing the whole mask)."""
        return self._m.validate_tokens([token]) == 1

    def mask(self) -> np.ndarray:
        """Booleans over the vocabulary: True where the token may come next."""
        self._m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        self._raise_if_failed()
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocab_size].view(bool)

    def accept(self, token: int) -> None:
        if not self._m.consume_token(token):
            self._raise_if_failed()
            raise RuntimeError(f"the output constraint refused token {token}, which its own mask allowed")

    def rollback(self, n: int) -> None:
        if n and not self._m.rollback(n):
            raise RuntimeError(f"the output constraint could not undo {n} tokens")

    @property
    def done(self) -> bool:
        """Nothing but the end of the reply may come next."""
        return self._m.is_stopped()

    def _raise_if_failed(self) -> None:
        if self._m.is_error():
            raise RuntimeError(f"the output constraint failed: {self._m.get_error()}")


class _EncodeText:
    """llguidance's view of our tokenizer: text to ids, never control tokens.

    llguidance tokenizes the text a grammar forces (`{"` after a key, say) in the middle
    of a reply. A SentencePiece vocabulary that puts a space before the first word would
    turn "{" into "▁{": for those, forced text is split by longest match over the
    vocabulary's pieces instead (a valid split, not always the canonical one)."""

    def __init__(self, tokenizer: Tokenizer, eos: int, bos: int | None, tokens: list[bytes], special: list[int]):
        self._tokenizer = tokenizer
        self.eos_token_id = eos
        self.bos_token_id = bos
        self.tokens = tokens
        self.special_token_ids = special
        self._pieces: dict[bytes, int] | None = None
        self._longest = 0

    def __call__(self, text):
        if isinstance(text, bytes):  # llguidance asks once whether bytes are accepted: no
            raise TypeError("text, not bytes")
        if not self._tokenizer.adds_space_prefix:
            return self._tokenizer.encode(text, add_bos=False, special=False)
        return self._longest_match(text.encode("utf-8"))

    def _longest_match(self, data: bytes) -> list[int]:
        if self._pieces is None:
            special = set(self.special_token_ids)
            self._pieces = {}
            for i, piece in enumerate(self.tokens):
                if i not in special and piece:
                    self._pieces.setdefault(piece, i)
            self._longest = max(map(len, self._pieces), default=1)
        out, i = [], 0
        while i < len(data):
            for n in range(min(self._longest, len(data) - i), 0, -1):
                token = self._pieces.get(data[i:i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:  # a byte no piece covers: the vocabulary cannot write it
                raise ValueError(f"no token for byte {data[i]:#x}")
        return out


class ConstraintCompiler:
    """Constraints compiled against one vocabulary."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._lltokenizer = None

    def _llg_tokenizer(self):
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = self._build_tokenizer()
            return self._lltokenizer

    def _build_tokenizer(self):
        import llguidance

        tok = self._tokenizer
        tokens, special = [], []
        for i in range(tok.vocab_size):
            piece = tok.token_bytes(i)
            if tok.is_control(i) or not piece:
                special.append(i)
                piece = _SPECIAL_MARK + (tok.token_text(i) or f"<[{i}]>").encode("utf-8", "replace")
            tokens.append(piece)
        ends = sorted(tok.end_of_turn_ids | ({tok.eos_id} if tok.eos_id is not None else set()))
        if not ends:
            raise UserError("this model's vocabulary has no end-of-text token, so a constrained reply could not end")
        wrapper = llguidance.TokenizerWrapper(_EncodeText(tok, ends[0], tok.bos_id, tokens, special))
        return llguidance.LLTokenizer(wrapper, n_vocab=tok.vocab_size, eos_token=ends)

    def check(self, constraint: OutputConstraint) -> None:
        """A `UserError` naming the problem when `constraint` cannot be enforced."""
        from llguidance import LLMatcher

        grammar = self._grammar(constraint)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise UserError(f"the {_what(constraint)} cannot be used: {_first_line(messages[0])}")

    def matcher(self, constraint: OutputConstraint, vocab_size: int | None = None) -> TokenMatcher:
        """A fresh matcher at the start of the reply. `vocab_size`: the width of the
        model's logits when it pads the vocabulary."""
        from llguidance import LLMatcher

        tok = self._llg_tokenizer()
        m = LLMatcher(tok, self._grammar(constraint), log_level=0)
        if m.is_error():
            raise UserError(f"the {_what(constraint)} cannot be used: {_first_line(m.get_error())}")
        return TokenMatcher(m, vocab_size or self._tokenizer.vocab_size)

    @staticmethod
    def _grammar(constraint: OutputConstraint) -> str:
        try:
            return grammar_text(constraint)
        except ValueError as e:  # llguidance's own parse errors
            raise UserError(f"the {_what(constraint)} cannot be used: {_first_line(e)}") from None


def _what(constraint: OutputConstraint) -> str:
    return {"json_schema": "JSON schema", "json_object": "JSON mode", "lark": "grammar",
            "regex": "regular expression"}.get(constraint.kind, "constraint")


def _first_line(e) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else "unknown error"


_COMPILERS: "weakref.WeakKeyDictionary[Tokenizer, ConstraintCompiler]" = weakref.WeakKeyDictionary()
_COMPILERS_LOCK = threading.Lock()


def compiler_for(tokenizer: Tokenizer) -> ConstraintCompiler:
    """The compiler for `tokenizer`, made once and kept while the vocabulary lives."""
    with _COMPILERS_LOCK:
        compiler = _COMPILERS.get(tokenizer)
        if compiler is None:
            compiler = _COMPILERS[tokenizer] = ConstraintCompiler(tokenizer)
        return compiler
