"""The conversation list: a search box over the conversations, newest first.

It shows what it is given and reports what the user asks (open, rename, delete) as
messages; the chat screen does the work against the store.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from localllm.tui.store import Conversation


class ConversationOptions(OptionList):
    """The list itself; Enter opens, F2 renames, Delete removes the highlighted one."""

    BINDINGS = [
        Binding("f2,r", "request('rename')", "Rename", tooltip="Rename the highlighted chat"),
        Binding("delete,d", "request('delete')", "Delete", tooltip="Delete the highlighted chat (asks first)"),
    ]

    def action_request(self, what: str) -> None:
        option = self.highlighted_option
        if option is not None and option.id is not None:
            self.post_message(ConversationList.Requested(what, int(option.id)))


class ConversationList(Vertical):
    """Search box plus the list of conversations."""

    class Requested(Message):
        """The user asked to `open`, `rename` or `delete` conversation `conversation_id`."""

        def __init__(self, what: str, conversation_id: int) -> None:
            super().__init__()
            self.what = what
            self.conversation_id = conversation_id

    class SearchChanged(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def compose(self):
        yield Input(placeholder="Search chats", id="conversation-search")
        yield ConversationOptions(id="conversation-options")

    @property
    def options(self) -> ConversationOptions:
        return self.query_one(ConversationOptions)

    @property
    def search_text(self) -> str:
        return self.query_one(Input).value

    def show(self, conversations: list[Conversation], current_id: int | None) -> None:
        options = self.options
        options.clear_options()
        options.add_options([Option(c.title, id=str(c.id)) for c in conversations])
        if not conversations:
            options.add_option(Option("(no chats)" if not self.search_text else "(no match)", disabled=True))
        ids = [c.id for c in conversations]
        if ids:  # the open chat, else the first one: the cursor is always somewhere
            options.highlighted = ids.index(current_id) if current_id in ids else 0

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Requested("open", int(event.option.id)))

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.SearchChanged(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.options.focus()
