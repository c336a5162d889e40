"""The prompt box: multi-line text where Enter sends and Ctrl+J (or Shift/Alt+Enter,
where the terminal reports them) starts a new line; Up in an empty box asks to edit the
last message."""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


class PromptInput(TextArea):
    """A TextArea that sends on Enter."""

    BINDINGS = [
        Binding("ctrl+j", "newline", "Newline", show=False, tooltip="Start a new line (Shift+Enter or Alt+Enter where the terminal tells them apart)"),
        Binding("shift+enter,alt+enter", "newline", "Newline", show=False),
    ]

    class Submitted(Message):
        """The user pressed Enter with this text in the box."""

        def __init__(self, prompt: "PromptInput", text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

        @property
        def control(self) -> "PromptInput":
            return self.prompt

    class EditLast(Message):
        """Up was pressed in an empty box: the user wants their last message back."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("placeholder", "Message · Enter sends · Ctrl+J new line")
        super().__init__(soft_wrap=True, show_line_numbers=False, tab_behavior="focus", **kwargs)

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            if self.text.strip():
                self.post_message(self.Submitted(self, self.text))
            return
        if event.key == "up" and not self.text:
            event.stop()
            event.prevent_default()
            self.post_message(self.EditLast())
            return
        await super()._on_key(event)

    def action_newline(self) -> None:
        start, end = self.selection
        self._replace_via_keyboard("\n", start, end)
