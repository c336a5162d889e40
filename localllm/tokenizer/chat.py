"""Chat prompts: messages in, the exact tokens the model was trained on out.

`ChatPrompter` is the one entry point frontends use (through `localllm.runtime`).
"""

from __future__ import annotations

from typing import Sequence

from localllm.types import Message


class ChatPrompter:
    """Turn a conversation into prompt tokens for one model.

    `tokenizer` offers `tokenize(text, add_bos, special)`; `template` is the model's Jinja
    chat template (None for base models, which continue the text as written).
    """

    def __init__(self, tokenizer, template: str | None, model_name: str = ""):
        self.tokenizer = tokenizer
        self.template = template
        self.model_name = model_name
        self.stop_token_ids: frozenset[int] = frozenset(getattr(tokenizer, "eos_ids", ()))

    @property
    def has_template(self) -> bool:
        return self.template is not None

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        # Base-model fallback: the conversation's text, one message per paragraph.
        text = "\n\n".join(m.content for m in messages)
        return self.tokenizer.tokenize(text, add_bos=True, special=False)
