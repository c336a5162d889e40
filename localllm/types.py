"""Plain data passed between layers: sampling parameters, generation chunks, stats, messages.

A leaf module: it imports nothing from the rest of the package, so every layer can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. `temperature == 0` means greedy (argmax).

    Defaults follow llama.cpp's. Penalties are off at their neutral values
    (repeat 1.0, presence and frequency 0.0); `logit_bias` maps token id to an additive bias.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def has_penalties(self) -> bool:
        return (
            self.repeat_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )


DraftMode = Literal["auto", "prompt-lookup", "none"]
DRAFT_MODES: tuple[str, ...] = ("auto", "prompt-lookup", "none")


@dataclass(frozen=True)
class DraftParams:
    """Speculative decoding for one request (`localllm.speculative`).

    `mode`: "auto" drafts by prompt lookup only where it measurably pays (per model, from
    timed forward passes and the acceptance seen so far); "prompt-lookup" always drafts;
    "none" decodes one token per forward pass. `max_tokens`: the most tokens one draft
    proposes. `ngram`: the longest context n-gram matched (down to 1). The text is the
    same in every mode (greedy: token for token; sampling: the same seeded draws).
    """

    mode: DraftMode = "auto"
    max_tokens: int = 8
    ngram: int = 3

    def problem(self) -> str | None:
        """None when valid; else one line naming the bad value (for exit 2 / a 400)."""
        if self.mode not in DRAFT_MODES:
            return f"draft mode {self.mode!r} is not one of {', '.join(DRAFT_MODES)}"
        if not 1 <= self.max_tokens <= 64:
            return f"draft max {self.max_tokens} must be between 1 and 64"
        if not 1 <= self.ngram <= 16:
            return f"draft n-gram length {self.ngram} must be between 1 and 16"
        return None


@dataclass(frozen=True)
class OutputConstraint:
    """What the generated text must be, enforced token by token while decoding.

    `kind`: "json_schema" (`text` is the schema as JSON), "json_object" (any JSON object;
    `text` is ignored), "lark" (a Lark grammar, the dialect llguidance reads, which may
    inline schemas with `%json {...}`) or "regex" (the whole reply matches `text`).
    """

    kind: Literal["json_schema", "json_object", "lark", "regex"]
    text: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: prompt tokens in, up to `max_tokens` new tokens out."""

    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams = SamplingParams()
    max_tokens: int | None = None  # None: until an end token or a full context
    stop: tuple[str, ...] = ()
    # Tokens that end the reply besides the vocabulary's end-of-generation set
    # (a chat template's end-of-turn token, say).
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    # The first generated piece after a bare BOS drops its leading space (SentencePiece
    # marks word starts with one), as llama2.c and llama.cpp print it.
    strip_leading_space: bool = True
    # Chat turns the overflow policy left out to make the prompt fit (for the frontend).
    dropped_messages: int = 0
    # Control tokens whose text is part of the reply (a tool-call marker such as
    # "[TOOL_CALLS]" that the tool-call parser must see); other control tokens give no text.
    special_text_ids: frozenset[int] = frozenset()
    # Decoding allows only tokens that keep the output inside this constraint.
    constraint: OutputConstraint | None = None
    # Log probabilities per generated token: None for none; otherwise the chosen token's
    # and this many most likely alternatives' (0 to 20).
    logprobs: int | None = None
    draft: DraftParams = DraftParams()


@dataclass
class GenerationStats:
    """The numbers people care about, for `--verbose`, `--stats json` and the server."""

    backend: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    peak_rss_bytes: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def acceptance_rate(self) -> float:
        """The share of drafted tokens the model confirmed (speculative decoding)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        # The first token comes out of prefill; decode speed counts the steps after it.
        return self.decode_steps / self.decode_s if self.decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["prefill_tokens_per_s"] = round(self.prefill_tokens_per_s, 3)
        d["decode_tokens_per_s"] = round(self.decode_tokens_per_s, 3)
        return d


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability and the `top` most likely alternatives at its
    position, as (token id, log probability), most likely first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """One step of a generation stream.

    `text` is the new, complete UTF-8 text (possibly empty while a character or a
    possible stop string is still pending); the last chunk has `finish_reason` and `stats`.
    `from_draft`: the token was proposed by a draft (speculative decoding) and accepted
    by the model.
    """

    text: str
    token: int | None = None
    finish_reason: FinishReason | None = None
    stats: GenerationStats | None = None
    from_draft: bool = False
    # The token's log probability, when the request asked for them.
    logprob: TokenLogprob | None = None


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant made: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One chat message. An assistant message may carry `tool_calls`; a tool message
    answers one of them (`tool_call_id`, and the function's `name` where known)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (from its GGUF header or config)."""

    path: str
    architecture: str
    name: str = ""
    context_length: int = 0
    vocab_size: int = 0
    n_params: int = 0
    file_type: str = ""
    chat_template: str | None = None
    metadata: dict = field(default_factory=dict, repr=False)
