"""`Inbox`: an invisible widget that worker threads post to.

Coalescing (`Message.can_replace`) only merges messages that sit next to each other in
one queue. A screen's queue also carries Textual's own layout and update messages, one
pair per repaint, so streaming updates posted to a screen end up interleaved with them
and never merge: at thousands of tokens per second the backlog then grows without bound.
An inbox's queue holds nothing but what workers post, so every update that arrives
while the previous one is being drawn is merged into one.

The inbox hands each message to its owner (`owner.on_inbox_<handler name>`), awaiting
it, so the next batch is taken only when the screen has caught up.
"""

from __future__ import annotations

from textual.widget import Widget

from localllm.tui.messages import PullFinished, PullProgressed, ReplyDelta, ReplyFinished, ReplyStarted


class Inbox(Widget):
    DEFAULT_CSS = "Inbox { display: none; }"

    def __init__(self, owner, **kwargs) -> None:
        super().__init__(**kwargs)
        self.owner = owner

    async def _deliver(self, message) -> None:
        message.stop()
        handler = getattr(self.owner, f"on_inbox_{message.handler_name.removeprefix('on_')}", None)
        if handler is not None:
            result = handler(message)
            if result is not None:
                await result

    async def on_reply_started(self, message: ReplyStarted) -> None:
        await self._deliver(message)

    async def on_reply_delta(self, message: ReplyDelta) -> None:
        await self._deliver(message)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        await self._deliver(message)

    async def on_pull_progressed(self, message: PullProgressed) -> None:
        await self._deliver(message)

    async def on_pull_finished(self, message: PullFinished) -> None:
        await self._deliver(message)
