"""Messages that worker threads post to the UI; the only way they talk to it.

Streaming updates carry the whole text so far, never a delta, so a newer update can
replace an older one still queued (`can_replace`) without losing anything: however fast
tokens arrive, the UI handles at most one pending update per reply. Workers post them to
an `Inbox` widget (widgets/inbox.py), whose queue holds nothing else, so that queued
updates sit next to each other and do merge.
"""

from __future__ import annotations

from textual.message import Message

from localllm.registry.entries import ModelEntry
from localllm.types import GenerationStats


class ReplyStarted(Message):
    """The prompt is tokenized and queued on the engine; `dropped` old messages were left
    out because the conversation no longer fits the context."""

    def __init__(self, message_id: int, prompt_tokens: int, n_ctx: int, dropped: int = 0) -> None:
        super().__init__()
        self.message_id = message_id
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.dropped = dropped


class ReplyDelta(Message):
    """The reply so far: `text` is everything written, `tokens` how many tokens made it."""

    def __init__(self, message_id: int, text: str, tokens: int, elapsed_s: float, ttft_s: float | None) -> None:
        super().__init__()
        self.message_id = message_id
        self.text = text
        self.tokens = tokens
        self.elapsed_s = elapsed_s
        self.ttft_s = ttft_s

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReplyDelta) and message.message_id == self.message_id


class ReplyFinished(Message):
    """The reply ended: finished, stopped by the user (`cancelled`), or failed (`error`)."""

    def __init__(
        self, message_id: int, text: str, finish_reason: str, stats: GenerationStats | None = None, error: str | None = None
    ) -> None:
        super().__init__()
        self.message_id = message_id
        self.text = text
        self.finish_reason = finish_reason
        self.stats = stats
        self.error = error


class ModelLoaded(Message):
    def __init__(self, name: str, model: object, ctx_size: int) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.ctx_size = ctx_size


class ModelLoadFailed(Message):
    """Loading failed; `missing` when the name resolves to nothing (offer to pull it)."""

    def __init__(self, name: str, error: str, missing: bool) -> None:
        super().__init__()
        self.name = name
        self.error = error
        self.missing = missing


class PullProgressed(Message):
    def __init__(self, name: str, status: str, completed: int, total: int) -> None:
        super().__init__()
        self.name = name
        self.status = status
        self.completed = completed
        self.total = total

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PullProgressed) and message.name == self.name


class PullFinished(Message):
    def __init__(self, name: str, entry: ModelEntry | None, error: str | None = None, cancelled: bool = False) -> None:
        super().__init__()
        self.name = name
        self.entry = entry
        self.error = error
        self.cancelled = cancelled
