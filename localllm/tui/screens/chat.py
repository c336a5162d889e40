"""The chat screen: conversation list, chat view, prompt box and status bar.

It owns the conversation being shown and the reply being written. A reply runs on a
thread worker (`workers.stream_reply_worker`) that only posts messages; this screen
turns them into widget updates and store writes (a finished line is saved as soon as it
arrives). Regenerate and edit-last resubmit the shortened conversation: the engine keeps
the common token prefix in its KV cache and trims the rest, so nothing is re-prefilled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer

from localllm.tui.export import conversation_markdown, slug
from localllm.tui.messages import ReplyDelta, ReplyFinished, ReplyStarted
from localllm.tui.screens.dialogs import ConfirmDialog, TextPromptDialog
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.store import Conversation, StoredMessage
from localllm.tui.widgets.chat_view import ChatView, MessageBubble, code_blocks
from localllm.tui.widgets.conversation_list import ConversationList
from localllm.tui.widgets.prompt_input import PromptInput
from localllm.tui.widgets.status_bar import StatusBar
from localllm.tui.workers import stream_reply_worker
from localllm.types import Message, SamplingParams

# Save a streaming reply at each finished line, or after this many unsaved characters
# (a long paragraph has no line ends).
SAVE_EVERY_CHARS = 400


@dataclass
class ActiveReply:
    conversation_id: int
    message_id: int
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    saved: int = 0
    prompt_tokens: int = 0
    n_ctx: int = 0


class ChatScreen(Screen):
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
        last = self.store.pref("last_conversation")
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

    async def request_reply(self) -> None:
        """Reply to the conversation as it stands, once the right model is loaded."""
        conv = self.ensure_conversation()
        if not self.app.model_ready_for(conv.settings.ctx_size):
            if self.app.model_name is None:
                self.notify("No model loaded: press Ctrl+O to pick or pull one", severity="warning")
                return
            self.pending_send = True
            self.app.load_model(self.app.model_name, conv.settings.ctx_size)
            return
        await self.start_reply()

    async def on_model_ready(self) -> None:
        """Called by the app when a model finished loading."""
        if self.pending_send and self.reply is None:
            self.pending_send = False
            await self.request_reply()

    def model_messages(self, conv: Conversation, before_id: int) -> list[Message]:
        out = [Message("system", conv.settings.system_prompt)] if conv.settings.system_prompt.strip() else []
        for m in self.store.messages(conv.id):
            if m.id >= before_id:
                break
            if m.role == "assistant" and (m.state == "error" or not m.content):
                continue
            out.append(Message(m.role, m.content))
        return out

    async def start_reply(self) -> None:
        conv = self.conversation = self.store.get(self.ensure_conversation().id)
        model, name = self.app.model, self.app.model_name or ""
        if conv.model != name:
            self.store.set_model(conv.id, name)
        message = self.store.add_message(conv.id, "assistant", "", state="streaming", model=name)
        await self.chat_view.add(message, streaming=True)
        reply = self.reply = ActiveReply(conv.id, message.id)
        s = conv.settings
        sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p)
        work = partial(
            stream_reply_worker, model, self.model_messages(conv, message.id), sampling, s.max_tokens,
            message.id, self.post_message, reply.stop,
        )

        def run() -> None:
            try:
                work()
            finally:
                reply.done.set()

        self.status.set_speed(None, None)
        self.refresh_bindings()
        self.run_worker(run, thread=True, group="reply", exit_on_error=False)

    def stop_reply(self) -> ActiveReply | None:
        reply = self.reply
        if reply is not None:
            reply.stop.set()
        self.pending_send = False
        return reply

    def on_reply_started(self, message: ReplyStarted) -> None:
        if self.reply and self.reply.message_id == message.message_id:
            self.reply.prompt_tokens, self.reply.n_ctx = message.prompt_tokens, message.n_ctx
            self.update_context(message.prompt_tokens)

    async def on_reply_delta(self, message: ReplyDelta) -> None:
        reply = self.reply
        if reply is None or reply.message_id != message.message_id:
            return
        bubble = self.chat_view.bubble(message.message_id)
        if bubble is not None:
            await bubble.show(message.text)
        text = message.text
        cut = text.rfind("\n") + 1
        if cut > reply.saved:
            self.store.update_message(reply.message_id, text[:cut])
            reply.saved = cut
        elif len(text) - reply.saved >= SAVE_EVERY_CHARS:
            self.store.update_message(reply.message_id, text)
            reply.saved = len(text)
        decode_s = message.elapsed_s - (message.ttft_s or 0.0)
        self.status.set_speed(message.ttft_s, (message.tokens - 1) / decode_s if decode_s > 0 and message.tokens > 1 else None)
        self.update_context(reply.prompt_tokens + message.tokens)

    async def on_reply_finished(self, message: ReplyFinished) -> None:
        reply = self.reply
        if reply is None or reply.message_id != message.message_id:
            return
        self.reply = None
        state = {"cancelled": "cancelled", "error": "error"}.get(message.finish_reason, "done")
        stats = message.stats.as_dict() if message.stats else {}
        self.store.update_message(message.message_id, message.text, state=state, stats=stats)
        self.store.touch(reply.conversation_id)
        bubble = self.chat_view.bubble(message.message_id)
        if bubble is not None:
            await bubble.finish(message.text, state, message.error)
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error", timeout=10)
        if message.stats:
            st = message.stats
            self.status.set_speed(st.ttft_s, st.decode_tokens_per_s)
            self.status.set_draft(st.draft_tokens, st.accepted_tokens)
            if self.conversation and self.conversation.id == reply.conversation_id:
                self.update_context(st.prompt_tokens + st.generated_tokens)
        self.refresh_list()
        self.refresh_bindings()

    def update_context(self, used: int) -> None:
        self.context_used = used
        limit = self.app.model.n_ctx if self.app.model is not None else 0
        level = self.status.set_context(used, limit)
        if level == "danger" and not self._warned_context:
            self._warned_context = True
            self.notify(
                f"The context is nearly full ({used} of {limit} tokens): start a new chat (Ctrl+N) "
                "or raise the context size (Ctrl+S)", title="Context", severity="warning", timeout=8,
            )

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

        self.app.push_screen(SettingsScreen(conv.settings, conv.title), done)

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
