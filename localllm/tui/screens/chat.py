"""The chat screen: conversation list, chat view, prompt box and status bar.

It owns the conversation being shown and what the keys do to it (new, open, rename,
delete, settings, regenerate, edit, copy, export). Writing a reply lives in
`screens.replies` (the `ReplyStreaming` mixin).
"""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from localllm.tui.export import conversation_markdown, slug
from localllm.tui.screens.dialogs import ConfirmDialog, TextPromptDialog
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.screens.replies import ActiveReply, ReplyStreaming
from localllm.tui.store import Conversation, StoredMessage
from localllm.tui.widgets.chat_view import ChatView, MessageBubble, code_blocks
from localllm.tui.widgets.conversation_list import ConversationList
from localllm.tui.widgets.inbox import Inbox
from localllm.tui.widgets.prompt_input import PromptInput
from localllm.tui.widgets.status_bar import StatusBar


class ChatScreen(ReplyStreaming, Screen):
    # Keys the prompt box (a TextArea) also binds are priority bindings here: in a chat
    # box, "edit my last message" matters more than Emacs' end-of-line.
    BINDINGS = [
        Binding("escape", "stop", "Stop", tooltip="Stop the reply, keeping what was written"),
        Binding("ctrl+n", "new_chat", "New", tooltip="Start a new chat"),
        Binding("ctrl+o", "pick_model", "Model", tooltip="Pick a model, or pull a new one"),
        Binding("ctrl+s", "settings", "Settings", tooltip="This chat's system prompt, sampling, context size"),
        Binding("ctrl+r", "regenerate", "Regen", tooltip="Write the last reply again"),
        Binding("ctrl+e", "edit_last", "Edit", priority=True, tooltip="Edit your last message (also Up in an empty box)"),
        Binding("ctrl+y", "copy_reply", "Copy reply", show=False, priority=True, tooltip="Copy the focused or last reply"),
        Binding("ctrl+k", "copy_code", "Copy code", show=False, priority=True, tooltip="Copy a code block of the focused or last reply (again: the one before)"),
        Binding("ctrl+p", "export", "Export", show=False, tooltip="Export this chat as a Markdown file"),
        Binding("ctrl+b", "toggle_sidebar", "Chats panel", show=False, tooltip="Show or hide the chat list"),
        Binding("ctrl+f", "search", "Search chats", show=False, tooltip="Search chat titles and messages"),
        Binding("f2", "rename", "Rename chat", show=False, tooltip="Rename this chat"),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat-screen")
        self.conversation: Conversation | None = None
        self.reply: ActiveReply | None = None
        self.pending_send = False
        self.context_used = 0
        self._warned_context = False

    def compose(self):
        with Horizontal(id="body"):
            yield ConversationList(id="sidebar")
            with Vertical(id="main"):
                yield ChatView(id="chat-view")
                yield PromptInput(id="prompt")
        yield StatusBar(id="status")
        yield Footer()
        yield Inbox(self, id="reply-inbox")

    @property
    def store(self):
        return self.app.store

    @property
    def chat_view(self) -> ChatView:
        return self.query_one(ChatView)

    @property
    def status(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def prompt(self) -> PromptInput:
        return self.query_one(PromptInput)

    async def on_mount(self) -> None:
        self.refresh_list()
        # `chat MODEL` starts a new conversation, as `ollama run MODEL` does; plain `chat`
        # and `chat MODEL --resume` reopen the last one.
        last = self.store.pref("last_conversation") if self.app.resume or not self.app.initial_model else ""
        if last.isdigit() and self.store.get(int(last)) is not None:
            await self.open_conversation(int(last))
        self.prompt.focus()

    # conversations

    def refresh_list(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.show(self.store.list(sidebar.search_text), self.conversation.id if self.conversation else None)

    async def open_conversation(self, conversation_id: int | None) -> None:
        self.stop_reply()
        self.conversation = self.store.get(conversation_id) if conversation_id is not None else None
        messages = self.store.messages(conversation_id) if self.conversation else []
        await self.chat_view.load(messages)
        self.store.set_pref("last_conversation", str(conversation_id or ""))
        self._warned_context = False
        used = 0
        for m in reversed(messages):
            if m.role == "assistant" and m.stats:
                used = int(m.stats.get("prompt_tokens", 0)) + int(m.stats.get("generated_tokens", 0))
                break
        self.update_context(used)
        self.refresh_list()

    def ensure_conversation(self) -> Conversation:
        if self.conversation is None:
            self.conversation = self.store.create(self.app.model_name or "", self.app.conversation_defaults)
            self.store.set_pref("last_conversation", str(self.conversation.id))
        return self.conversation

    async def on_conversation_list_requested(self, event: ConversationList.Requested) -> None:
        if event.what == "open":
            await self.open_conversation(event.conversation_id)
            self.prompt.focus()
        elif event.what == "rename":
            self.rename(event.conversation_id)
        elif event.what == "delete":
            self.delete(event.conversation_id)

    def on_conversation_list_search_changed(self, event: ConversationList.SearchChanged) -> None:
        self.refresh_list()

    def _target_id(self) -> int | None:
        options = self.query_one(ConversationList).options
        if options.has_focus and options.highlighted_option is not None and options.highlighted_option.id:
            return int(options.highlighted_option.id)
        return self.conversation.id if self.conversation else None

    def rename(self, conversation_id: int | None) -> None:
        conv = self.store.get(conversation_id) if conversation_id is not None else None
        if conv is None:
            self.notify("No chat to rename yet: send a message first", severity="warning")
            return

        def done(title: str | None) -> None:
            if title is not None and title.strip():
                self.store.rename(conv.id, title)
                if self.conversation and self.conversation.id == conv.id:
                    self.conversation = self.store.get(conv.id)
                self.refresh_list()

        self.app.push_screen(TextPromptDialog("Rename chat", conv.title), done)

    def delete(self, conversation_id: int | None) -> None:
        conv = self.store.get(conversation_id) if conversation_id is not None else None
        if conv is None:
            return

        async def done(yes: bool | None) -> None:
            if not yes:
                return
            if self.conversation and self.conversation.id == conv.id:
                await self.open_conversation(None)
            self.store.delete(conv.id)
            self.refresh_list()
            self.notify(f"Deleted “{conv.title}”")

        self.app.push_screen(ConfirmDialog(f"Delete the chat “{conv.title}” and all its messages?", "Delete", "Keep"), done)

    # sending and replies

    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        if self.reply is not None:
            self.notify("A reply is still being written: Esc stops it", severity="warning")
            return
        text = event.text.strip("\n")
        event.prompt.clear()
        conv = self.ensure_conversation()
        message = self.store.add_message(conv.id, "user", text)
        await self.chat_view.add(message)
        self.refresh_list()
        await self.request_reply()

    # actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop":
            return self.reply is not None
        return True

    def action_stop(self) -> None:
        if self.stop_reply() is not None:
            self.notify("Stopped; the reply keeps what was written")

    async def action_new_chat(self) -> None:
        await self.open_conversation(None)
        self.prompt.focus()

    def action_pick_model(self) -> None:
        self.app.action_pick_model()

    def action_settings(self) -> None:
        conv = self.ensure_conversation()

        async def done(settings) -> None:
            if settings is None:
                return
            self.store.set_settings(conv.id, settings)
            self.conversation = self.store.get(conv.id)
            self.refresh_list()
            if not self.app.model_ready_for(settings.ctx_size) and self.app.model_name and self.reply is None:
                self.app.load_model(self.app.model_name, settings.ctx_size)

        self.app.push_screen(SettingsScreen(conv.settings, conv.title, self.app.overflow_for(conv.settings)), done)

    def _last(self, role: str) -> StoredMessage | None:
        if self.conversation is None:
            return None
        found = [m for m in self.store.messages(self.conversation.id) if m.role == role]
        return found[-1] if found else None

    async def action_regenerate(self) -> None:
        if self.reply is not None or self.conversation is None:
            return
        messages = self.store.messages(self.conversation.id)
        if not messages:
            return
        if messages[-1].role == "assistant":
            self.store.delete_messages_from(self.conversation.id, messages[-1].id)
            await self.chat_view.remove_from(messages[-1].id)
        await self.request_reply()

    async def action_edit_last(self) -> None:
        if self.reply is not None:
            return
        last = self._last("user")
        if last is None:
            self.notify("Nothing to edit yet", severity="warning")
            return
        self.store.delete_messages_from(last.conversation_id, last.id)
        await self.chat_view.remove_from(last.id)
        self.prompt.load_text(last.content)
        self.prompt.move_cursor(self.prompt.document.end)
        self.prompt.focus()
        self.notify("Editing your last message: Enter sends it again")

    def _focused_bubble(self) -> MessageBubble | None:
        focused = self.focused
        return focused if isinstance(focused, MessageBubble) else self.chat_view.last_reply()

    def action_copy_reply(self) -> None:
        bubble = self._focused_bubble()
        if bubble is None:
            self.notify("No reply to copy yet", severity="warning")
        else:
            bubble.action_copy_reply()

    def action_copy_code(self) -> None:
        bubble = self._focused_bubble()
        if bubble is None or not code_blocks(bubble.text):
            self.notify("No code block to copy", severity="warning")
        else:
            bubble.action_copy_code()

    def action_export(self) -> None:
        if self.conversation is None:
            self.notify("Nothing to export yet", severity="warning")
            return
        conv = self.conversation
        default = str(Path.cwd() / f"{slug(conv.title)}.md")

        def done(path: str | None) -> None:
            if not path:
                return
            target = Path(path).expanduser()
            try:
                target.write_text(conversation_markdown(self.store.get(conv.id), self.store.messages(conv.id)), encoding="utf-8")
            except OSError as e:
                self.notify(f"Could not write {target}: {e.strerror or e}", severity="error")
                return
            self.notify(f"Exported to {target}")

        self.app.push_screen(TextPromptDialog("Export chat as Markdown to", default), done)

    def action_toggle_sidebar(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = not sidebar.display

    def action_search(self) -> None:
        sidebar = self.query_one(ConversationList)
        sidebar.display = True
        sidebar.query_one("#conversation-search").focus()

    def action_rename(self) -> None:
        self.rename(self._target_id())

    async def on_prompt_input_edit_last(self, event: PromptInput.EditLast) -> None:
        await self.action_edit_last()
