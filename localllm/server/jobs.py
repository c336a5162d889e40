"""The one native request type every API shape translates into, and what comes back.

A `GenerationJob` says which model, what prompt (a chat, plain text, token ids, or a
fill-in-the-middle pair), how to sample and when to stop. The OpenAI and Ollama modules
only parse into it and render out of `GenerationOutcome`; `service` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from localllm.types import GenerationStats, Message, OutputConstraint, SamplingParams, TokenLogprob


@dataclass(frozen=True)
class ChatPrompt:
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class TextPrompt:
    """Text continued as written (`templated=False`), or sent as one user turn through the
    model's chat template when it has one (Ollama's /api/generate without `raw`).
    `special`: the client formatted the prompt itself (raw mode), so text such as
    "<|im_start|>" means the control token; a user turn never gets that."""

    text: str
    system: str | None = None
    templated: bool = False
    special: bool = False


@dataclass(frozen=True)
class TokenPrompt:
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class MixedPrompt:
    """llama-server's prompt array: text pieces (special tokens parse) and token ids."""

    parts: tuple[Union[str, int], ...]


@dataclass(frozen=True)
class InfillPrompt:
    """Fill in the middle: the model writes what goes between `prefix` + `typed` and
    `suffix`. `repository`: llama-server's /infill layout, with `extra` (filename, text)
    context chunks and repository markers, cut to fit the context."""

    prefix: str
    suffix: str
    typed: str = ""
    extra: tuple[tuple[str, str], ...] = ()
    repository: bool = False


Prompt = Union[ChatPrompt, TextPrompt, TokenPrompt, MixedPrompt, InfillPrompt]


@dataclass(frozen=True)
class GenerationJob:
    model: str
    prompt: Prompt
    sampling: SamplingParams = SamplingParams()
    max_tokens: int | None = None  # None: until end of text or a full context; 0: prefill only
    max_tokens_param: str = "max_tokens"  # the field's name in the client's API, for errors
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate past the end-of-text token (llama-server's ignore_eos)
    keep_alive_s: float | None = None
    keep_alive_given: bool = False  # False: the model's own keep-alive applies
    api: str = "native"  # metrics label: openai_chat, openai_completions, ollama_chat, ...
    # The sampling fields the request gave itself, plus "max_tokens" and "stop" when it
    # gave those: a created model's defaults fill in only the rest.
    given: frozenset[str] = frozenset()
    ctx_size: int | None = None  # Ollama's options.num_ctx: a load of its own when it differs
    constraint: OutputConstraint | None = None  # response_format / Ollama format
    tools: tuple[dict, ...] = ()  # OpenAI tool objects the model may call (chat only)
    tool_choice: str | None = None  # auto, none, required, or a function's name
    logprobs: int | None = None  # None: none; n: the chosen token's and n alternatives
    # Speculative decoding fields the request gave (`server/drafting.py`); the rest default.
    draft: dict = field(default_factory=dict)


@dataclass
class GenerationOutcome:
    """What a finished (or failed) generation leaves for the renderer."""

    model: str
    text: str = ""
    finish_reason: str | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    load_s: float = 0.0  # time this request waited for its model to load
    queued_s: float = 0.0  # time it waited for the engine
    total_s: float = 0.0  # arrival to the last chunk
    dropped_messages: int = 0  # turns the overflow policy let go
    truncated: bool = False  # an infill prompt was cut to fit the context
    tool_format: object | None = None  # the model's ToolCallFormat when the job has tools
    logprobs: list[TokenLogprob] = field(default_factory=list)  # filled as tokens arrive
    token_bytes: object | None = None  # the model's token -> bytes, for logprob entries
