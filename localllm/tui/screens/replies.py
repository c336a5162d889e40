"""Writing a reply: the part of the chat screen that drives one generation.

`ReplyStreaming` is mixed into the chat screen. A reply runs on a thread worker
(`workers.stream_reply_worker`) that only posts messages, to the screen's `Inbox`
(where consecutive updates coalesce); the handlers here turn them into widget updates,
status-bar figures and store writes: a finished line is saved as soon as it arrives, so
a crash loses at most the line being written. Regenerate and edit-last resubmit the
shortened conversation: the engine keeps the common token prefix in its KV cache and
trims the rest, so nothing is re-prefilled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial

from localllm.tui.messages import ReplyDelta, ReplyFinished, ReplyStarted
from localllm.tui.store import Conversation, ConversationSettings
from localllm.tui.widgets.inbox import Inbox
from localllm.tui.workers import stream_reply_worker
from localllm.registry.modelfile import ModelDefaults
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


class ReplyStreaming:
    """Start, stop and show replies; mixed into the chat screen, whose widgets it uses."""

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
        # A created model's parameters, system prompt and opening messages apply where
        # the chat's own settings are left at their defaults.
        defaults = getattr(model, "defaults", None) or ModelDefaults()
        unset = ConversationSettings()
        given = {n for n in ("temperature", "top_p") if getattr(s, n) != getattr(unset, n)}
        sampling = defaults.sampling(SamplingParams(temperature=s.temperature, top_p=s.top_p), given)
        work = partial(
            stream_reply_worker, model, defaults.conversation(self.model_messages(conv, message.id)), sampling,
            s.max_tokens or defaults.num_predict or 0, message.id, self.query_one(Inbox).post_message, reply.stop,
            self.app.overflow_for(s), stop_strings=defaults.stop,
            draft=self.app.draft_for(s),
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

    def on_inbox_reply_started(self, message: ReplyStarted) -> None:
        if self.reply and self.reply.message_id == message.message_id:
            self.reply.prompt_tokens, self.reply.n_ctx = message.prompt_tokens, message.n_ctx
            self.update_context(message.prompt_tokens)
            if message.dropped:
                self.notify(
                    f"The {message.dropped} oldest messages no longer fit the context and were left out of this "
                    "reply (they stay in the chat)", title="Context", severity="warning", timeout=8,
                )

    async def on_inbox_reply_delta(self, message: ReplyDelta) -> None:
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
        if reply.stop.is_set():  # stopped (another chat may be open now): saving was all
            return
        decode_s = message.elapsed_s - (message.ttft_s or 0.0)
        self.status.set_speed(message.ttft_s, (message.tokens - 1) / decode_s if decode_s > 0 and message.tokens > 1 else None)
        self.update_context(reply.prompt_tokens + message.tokens)

    async def on_inbox_reply_finished(self, message: ReplyFinished) -> None:
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
