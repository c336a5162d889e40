"""Per-request speculative decoding in both API shapes: `draft` ("auto", "prompt-lookup",
"none"), `draft_max` and `draft_ngram`, top-level in OpenAI requests and inside `options`
in Ollama's. Fields left out take the server's defaults (`serve --draft ...`)."""

from __future__ import annotations

import dataclasses

from localllm.server.errors import BadRequest
from localllm.server.fields import Fields
from localllm.types import DRAFT_MODES, DraftParams


def parse_draft(f: Fields) -> dict:
    """The draft fields a request gave, as `DraftParams` keywords (a 400 for bad ones)."""
    given = {}
    mode = f.text("draft")
    if mode is not None:
        if mode not in DRAFT_MODES:
            raise BadRequest(f"'{f.name('draft')}' is {mode!r}: use one of {', '.join(DRAFT_MODES)}",
                             param=f.name("draft"))
        given["mode"] = mode
    most = f.integer("draft_max", lo=1, hi=64)
    if most is not None:
        given["max_tokens"] = most
    ngram = f.integer("draft_ngram", lo=1, hi=16)
    if ngram is not None:
        given["ngram"] = ngram
    return given


def draft_for(given: dict, defaults: DraftParams) -> DraftParams:
    return dataclasses.replace(defaults, **given)
