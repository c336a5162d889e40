"""The chat view: one `MessageBubble` per message, in a scrolling column.

An assistant reply is rendered as Markdown by `MarkdownText` (code blocks highlighted),
one widget per reply that re-renders only the block being written, so neither a long
reply nor a long conversation slows down the updates of a streaming one. A focused bubble copies its reply (`c`) or its
code blocks (`k`, cycling from the last) to the clipboard through OSC 52.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Static

from localllm.tui.store import StoredMessage
from localllm.tui.widgets.markdown_text import MarkdownText
from localllm.tui.workers import model_label

ROLE_LABELS = {"user": "You", "assistant": "Assistant", "system": "System"}
STATE_NOTES = {"cancelled": "stopped", "streaming": "interrupted", "error": "failed"}


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced and indented code blocks of `markdown`, in order."""
    tokens = MarkdownIt("commonmark").parse(markdown)
    return [t.content for t in tokens if t.type in ("fence", "code_block")]


class MessageBubble(Vertical, can_focus=True):
    """One message. Assistant text is Markdown; user text is shown as typed."""

    BINDINGS = [
        Binding("c", "copy_reply", "Copy", tooltip="Copy this message"),
        Binding("k", "copy_code", "Copy code", tooltip="Copy a code block of this message (again: the one before)"),
    ]

    def __init__(self, message: StoredMessage, streaming: bool = False) -> None:
        super().__init__(classes=f"bubble -{message.role}")
        self.message_id = message.id
        self.role = message.role
        self.text = message.content
        self.model = message.model
        self.state = "streaming" if streaming else message.state
        self._live = streaming
        self._code_index = 0

    def compose(self):
        yield Label(self._header(), classes="bubble-header")
        if self.role == "assistant":
            yield MarkdownText(self.text, classes="bubble-body")
        else:
            yield Static(self.text, markup=False, classes="bubble-body")

    def _header(self) -> str:
        parts = [ROLE_LABELS.get(self.role, self.role)]
        if self.model and self.role == "assistant":
            parts.append(model_label(self.model))
        if self._live:
            parts.append("writing…")
        elif self.state in STATE_NOTES:
            parts.append(STATE_NOTES[self.state])
        return " · ".join(parts)

    async def show(self, text: str) -> None:
        """Display `text` as the whole reply so far."""
        if text == self.text:
            return
        self.query_one(".bubble-body").update(text)
        self.text = text

    async def finish(self, text: str, state: str, error: str | None = None) -> None:
        """The reply ended in `state` (done, cancelled or error)."""
        self._live = False
        self.state = state
        if error and not text:
            text = f"*{error}*"
        await self.show(text)
        self.query_one(".bubble-header", Label).update(self._header())
        self.set_class(state == "error", "-error")

    def action_copy_reply(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.notify(f"Copied the {ROLE_LABELS.get(self.role, self.role).lower()} message ({len(self.text)} characters)")

    def action_copy_code(self) -> None:
        blocks = code_blocks(self.text)
        if not blocks:
            self.notify("This message has no code block", severity="warning")
            return
        index = len(blocks) - 1 - (self._code_index % len(blocks))
        self._code_index += 1
        self.app.copy_to_clipboard(blocks[index])
        self.notify(f"Copied code block {index + 1} of {len(blocks)}")


class ChatView(VerticalScroll, can_focus=False):
    """The messages of one conversation, newest at the bottom, kept scrolled to the end
    while a reply streams unless the user scrolls away."""

    EMPTY_TEXT = "Type a message below and press Enter. F1 shows every key."

    def compose(self):
        yield Static(self.EMPTY_TEXT, id="chat-empty")

    async def load(self, messages: list[StoredMessage]) -> None:
        await self.remove_children(MessageBubble)
        await self.mount_all([MessageBubble(m) for m in messages])
        self._update_empty()
        self.anchor()

    async def add(self, message: StoredMessage, streaming: bool = False) -> MessageBubble:
        bubble = MessageBubble(message, streaming=streaming)
        await self.mount(bubble)
        self._update_empty()
        self.anchor()
        return bubble

    async def remove_from(self, message_id: int) -> None:
        """Remove the bubble of `message_id` and every later one."""
        doomed = [b for b in self.query(MessageBubble) if b.message_id >= message_id]
        if doomed:
            await self.remove_children(doomed)
        self._update_empty()

    def bubble(self, message_id: int) -> MessageBubble | None:
        for b in self.query(MessageBubble):
            if b.message_id == message_id:
                return b
        return None

    def bubbles(self) -> list[MessageBubble]:
        return list(self.query(MessageBubble))

    def last_reply(self) -> MessageBubble | None:
        replies = [b for b in self.query(MessageBubble) if b.role == "assistant"]
        return replies[-1] if replies else None

    def _update_empty(self) -> None:
        self.query_one("#chat-empty").display = not self.query(MessageBubble)
