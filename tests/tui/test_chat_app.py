"""The chat app through Pilot, on the real stories260K model (CPU path): a streamed
reply, Esc, switching chats, persistence across restarts, regenerate and edit with
KV-cache reuse, errors that stay inside the app."""

from __future__ import annotations

import pytest

from localllm.tui.screens.dialogs import ConfirmDialog, ErrorDialog
from localllm.tui.screens.help import HelpScreen
from localllm.tui.screens.model_picker import ModelPickerScreen
from localllm.tui.store import ConversationStore
from localllm.kvcache.manager import FED_AT_LEAST

from .conftest import run, screen_text, send, wait_for, wait_loaded, wait_reply_done, wait_screen

pytestmark = pytest.mark.timeout(120)


def greedy_continuation(stories_path, prompt: str, n: int) -> str:
    from localllm.config import load_settings
    from localllm.runtime import load_model
    from localllm.types import Message, SamplingParams

    model = load_model(str(stories_path), load_settings(ctx_size=512, threads=1))
    try:
        return model.chat([Message("user", prompt)], SamplingParams(temperature=0), max_tokens=n).text()
    finally:
        model.close()


def test_type_a_prompt_and_see_the_streamed_reply(make_app, stories_path, isolated_home, monkeypatch):
    from localllm.tui.widgets.chat_view import MessageBubble

    seen_while_streaming = []
    show = MessageBubble.show

    async def spy(self, text):
        if self.role == "assistant" and self.state == "streaming":
            seen_while_streaming.append(text)
        await show(self, text)

    monkeypatch.setattr(MessageBubble, "show", spy)
    app = make_app(delay_s=0.005)

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            assert "stories260K" in screen_text(app) and "llamacpp" in screen_text(app)
            await send(pilot, "Once upon a time", type_it=True)
            await wait_reply_done(pilot)
            assert len(seen_while_streaming) >= 2  # it grew on screen, update by update
            reply = app.chat.chat_view.last_reply()
            assert reply.state == "done"
            assert "Lily" in screen_text(app)
            assert "tok/s" in screen_text(app) and "TTFT" in screen_text(app)
            return reply.text

    text = run(scenario())
    # Streaming showed growing prefixes of the final text.
    assert all(text.startswith(part) for part in seen_while_streaming) and len(seen_while_streaming[0]) < len(text)
    # The app's greedy reply is what the engine gives directly for the same conversation.
    assert text == greedy_continuation(stories_path, "Once upon a time", 48)
    store = ConversationStore.in_home(isolated_home)
    (conv,) = store.list()
    assert [(m.role, m.content, m.state) for m in store.messages(conv.id)] == [
        ("user", "Once upon a time", "done"), ("assistant", text, "done")]
    assert store.messages(conv.id)[1].stats["generated_tokens"] == 48


def test_escape_stops_a_reply_and_keeps_what_was_written(make_app, isolated_home):
    from localllm.tui.store import ConversationSettings

    app = make_app(delay_s=0.02, conversation_defaults=ConversationSettings(temperature=0.0, max_tokens=400))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            await wait_for(pilot, lambda: len(app.chat.chat_view.last_reply().text if app.chat.chat_view.last_reply() else "") > 10)
            assert "esc" in screen_text(app).lower()  # the footer offers Stop while writing
            await pilot.press("escape")
            await wait_reply_done(pilot)
            bubble = app.chat.chat_view.last_reply()
            assert bubble.state == "cancelled"
            assert "stopped" in screen_text(app)
            return bubble.text

    text = run(scenario())
    assert len(text) > 10
    store = ConversationStore.in_home(isolated_home)
    reply = store.messages(store.list()[0].id)[-1]
    assert (reply.content, reply.state) == (text, "cancelled")
    assert 0 < reply.stats["generated_tokens"] < 400


def test_switch_conversations_and_find_them_after_a_restart(make_app, isolated_home):
    async def first_session():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            first = app.chat.conversation.id
            await pilot.press("ctrl+n")
            assert app.chat.conversation is None and not app.chat.chat_view.bubbles()
            await send(pilot, "The cat sat")
            await wait_reply_done(pilot)
            second = app.chat.conversation.id
            assert second != first
            # Open the first chat from the list: its messages come back.
            options = app.chat.query_one("#conversation-options")
            options.focus()
            titles = [options.get_option_at_index(i).prompt for i in range(options.option_count)]
            assert titles == ["The cat sat", "Once upon a time"]
            await pilot.press("down", "enter")
            await pilot.pause()
            assert app.chat.conversation.id == first
            assert [b.text for b in app.chat.chat_view.bubbles()][0] == "Once upon a time"
            await pilot.press("ctrl+q")
        return first

    first = run(first_session())

    async def second_session():
        app = make_app(resume=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            # The last chat open reopens (--resume), and both are in the list.
            assert app.chat.conversation.id == first
            text = screen_text(app)
            assert "Once upon a time" in text and "The cat sat" in text
            bubbles = app.chat.chat_view.bubbles()
            assert [b.role for b in bubbles] == ["user", "assistant"] and bubbles[1].text
            # The context meter comes back from the stored stats.
            assert "ctx" in text and "/512" in text, text
            # It goes on where it was.
            await send(pilot, "Then")
            await wait_reply_done(pilot)
            assert len(app.chat.chat_view.bubbles()) == 4

    run(second_session())


def test_regenerate_and_edit_reuse_the_kv_cache(make_app, isolated_home):
    app = make_app()

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time there was a dog")
            await wait_reply_done(pilot)
            first_reply = app.chat.chat_view.last_reply().text
            conv = app.chat.conversation.id
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.chat.reply is not None or app.chat.chat_view.last_reply().state == "done")
            await wait_reply_done(pilot)
            msgs = app.store.messages(conv)
            assert [m.role for m in msgs] == ["user", "assistant"]
            assert msgs[1].content == first_reply  # greedy: the same reply again
            # The whole prompt was still cached, so the engine reused it.
            assert msgs[1].stats["cached_tokens"] >= msgs[1].stats["prompt_tokens"] - FED_AT_LEAST

            await pilot.press("ctrl+e")
            assert app.chat.prompt.text == "Once upon a time there was a dog"
            assert app.store.messages(conv) == [] and not app.chat.chat_view.bubbles()
            await pilot.press(*" named Max")
            await pilot.press("enter")
            await wait_reply_done(pilot)
            msgs = app.store.messages(conv)
            assert msgs[0].content == "Once upon a time there was a dog named Max"
            assert msgs[1].stats["cached_tokens"] > 0  # the shared prefix was not prefilled again

    run(scenario())


def test_missing_model_offers_a_pull(make_app, isolated_home):
    app = make_app(model="tinyllama-not-pulled:1b")

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_screen(pilot, ConfirmDialog)
            assert "not pulled yet" in screen_text(app)
            await pilot.press("y")
            await wait_screen(pilot, ModelPickerScreen)
            picker = app.screen
            assert picker.query_one("#pull-name").value == "tinyllama-not-pulled:1b"
            await pilot.press("escape")  # cancel the pull (or close after it failed)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, ModelPickerScreen))
            assert app.model is None and "no model" in screen_text(app)
            # Sending without a model keeps the message and says what to do.
            await send(pilot, "hello")
            await pilot.pause()
            assert app.chat.chat_view.bubbles()[0].text == "hello"

    run(scenario())


def test_load_failure_shows_its_message_and_the_app_keeps_running(make_app, tmp_path, stories_path):
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"this is not a GGUF file at all" * 10)
    app = make_app(model=str(bad))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_screen(pilot, ErrorDialog)
            text = screen_text(app)
            assert "Could not load not-a-model" in text and "not a GGUF model file" in text, text
            await pilot.press("escape")
            assert app.is_running and app.model is None
            # Picking a good model from here works.
            app.load_model(str(stories_path))
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            assert app.chat.chat_view.last_reply().state == "done"

    run(scenario())


def test_generation_error_stays_in_the_app(make_app):
    from localllm.tui.store import ConversationSettings

    # A system prompt longer than the context: the engine refuses it.
    long_prompt = "word " * 700
    app = make_app(conversation_defaults=ConversationSettings(temperature=0.0, max_tokens=8, system_prompt=long_prompt))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "hi")
            await wait_reply_done(pilot)
            bubble = app.chat.chat_view.last_reply()
            assert bubble.state == "error" and "context" in bubble.text
            assert "failed" in screen_text(app)
            # The failed reply is not fed back to the model, and the app still works.
            assert app.is_running

    run(scenario())


def test_copy_export_help_and_theme(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_app()

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            reply = app.chat.chat_view.last_reply()
            await pilot.press("ctrl+y")
            assert app.clipboard == reply.text
            # A code block, copied from a focused message.
            await reply.show("Try this:\n\n```python\nprint('hi')\n```\n\nand\n\n```\nls\n```\n")
            reply.focus()
            await pilot.press("k")
            assert app.clipboard == "ls\n"
            await pilot.press("k")
            assert app.clipboard == "print('hi')\n"
            await pilot.press("c")
            assert app.clipboard.startswith("Try this:")
            # Export as Markdown, to the offered path.
            app.chat.prompt.focus()
            await pilot.press("ctrl+p")
            await pilot.pause()
            await pilot.press("enter")
            await pilot.pause()
            exported = (tmp_path / "once-upon-a-time.md").read_text()
            assert exported.startswith("# Once upon a time") and "## You" in exported and "## Assistant (stories260K)" in exported
            # Help lists the keys; Esc closes it.
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen) and "Write the last reply again" in screen_text(app)
            assert "Write the last reply again" in app.screen.text
            await pilot.press("escape")
            # Light and dark themes, remembered.
            await pilot.press("ctrl+t")
            assert app.theme == "textual-light" and app.store.pref("theme") == "textual-light"
            await pilot.press("ctrl+t")
            assert app.theme == "textual-dark"

    run(scenario())


def test_settings_are_saved_per_conversation_and_resize_the_context(make_app, isolated_home):
    calls = []
    from .conftest import make_loader

    app = make_app(loader=make_loader(calls=calls))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await pilot.press("ctrl+s")
            await pilot.pause()
            screen = app.screen
            screen.query_one("#system_prompt").load_text("You tell short stories.")
            screen.query_one("#temperature").value = "0.5"
            screen.query_one("#ctx_size").value = "256"
            screen.query_one("#max_tokens").value = "abc"
            await pilot.press("ctrl+s")
            await pilot.pause()
            assert "is not a whole number" in screen.query_one("#settings-error").content
            screen.query_one("#max_tokens").value = "16"
            screen.query_one("#speculative").value = True
            await pilot.press("ctrl+s")
            await wait_for(pilot, lambda: len(calls) == 2 and app.model is not None and not app.loading)
            s = app.chat.conversation.settings
            assert (s.system_prompt, s.temperature, s.max_tokens, s.ctx_size, s.speculative) == (
                "You tell short stories.", 0.5, 16, 256, True)
            assert calls[-1][1] == 256 and app.model.n_ctx == 256
            assert "/256" in screen_text(app)
            await send(pilot, "Once")
            await wait_reply_done(pilot)
            msgs = app.store.messages(app.chat.conversation.id)
            assert msgs[-1].stats["generated_tokens"] <= 16

    run(scenario())


def test_a_reopened_chat_reuses_its_kv_snapshot(make_app, isolated_home):
    """Quit, start again, go on: the engine loads the conversation's KV snapshot from disk
    (the KV-cache manager writes one when the model closes) instead of prefilling the long
    first message again. (stories260K has no chat template, so the fallback prompt joins
    messages with blank lines and only the first message's tokens line up exactly.)"""
    from localllm.tui.store import ConversationSettings

    short = ConversationSettings(temperature=0.0, max_tokens=20)
    story = "The little dog ran to the park. " * 35

    async def first():
        app = make_app(conversation_defaults=short)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, story)
            await wait_reply_done(pilot)
            stats = app.store.messages(app.chat.conversation.id)[-1].stats
            await pilot.press("ctrl+q")
            return stats

    async def second():
        app = make_app(conversation_defaults=short, resume=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            assert len(app.chat.chat_view.bubbles()) == 2
            await send(pilot, "The end")
            await wait_reply_done(pilot)
            return app.store.messages(app.chat.conversation.id)[-1].stats

    before = run(first())
    assert before["prompt_tokens"] >= 260 and before["cached_tokens"] == 0
    assert any((isolated_home / "cache" / "kv-snapshots").rglob("*")), "no KV snapshot was written"
    after = run(second())
    assert after["cached_tokens"] >= before["prompt_tokens"] - 2, (before, after)


def test_a_chat_that_outgrows_the_context_drops_its_oldest_turns_when_asked(make_app, isolated_home):
    from localllm.tui.store import ConversationSettings

    app = make_app(conversation_defaults=ConversationSettings(temperature=0.0, max_tokens=60, overflow="drop-oldest"))

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            for prompt in ("Once upon a time", "Then", "Later", "In the end", "After that", "And then", "Finally"):
                await send(pilot, prompt)
                await wait_reply_done(pilot)
                assert app.chat.chat_view.last_reply().state == "done"
            # Every reply was written; the store keeps the whole chat even when the
            # model saw only the latest turns.
            assert len(app.store.messages(app.chat.conversation.id)) == 14

    run(scenario())


def test_without_any_model_the_picker_opens(make_app):
    app = make_app(model="")

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_screen(pilot, ModelPickerScreen)
            assert "no models pulled yet" in screen_text(app)
            await pilot.press("escape")
            await pilot.pause()
            assert app.model is None and "no model" in screen_text(app)

    run(scenario())


def test_a_streaming_reply_is_saved_line_by_line(make_app, isolated_home):
    """What a crash would leave: at any moment during a reply, the database holds every
    finished line of it (another connection reads it, as a restarted app would)."""
    import sqlite3

    from localllm.tui.store import ConversationSettings

    # Tokens 50 ms apart: the pilot's key press returns once the app is idle, and with
    # tokens 10 ms apart (as fast as stories260K then decodes here) the app was never idle
    # until the reply had ended, so nothing was seen streaming.
    app = make_app(delay_s=0.05, conversation_defaults=ConversationSettings(temperature=0.0, max_tokens=200))
    checks = []

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            reader = sqlite3.connect(str(isolated_home / "conversations.sqlite3"))

            def look():
                bubble = app.chat.chat_view.last_reply()
                if bubble is None or bubble.state != "streaming":
                    return bool(checks) and app.chat.reply is None
                (saved, state) = reader.execute(
                    "SELECT content, state FROM messages WHERE id = ?", (bubble.message_id,)).fetchone()
                checks.append((saved, bubble.text, state))
                return False

            await wait_for(pilot, look, timeout=100, step=0.01)  # 200 tokens, polled: slow on a busy machine
            reader.close()

    run(scenario())
    with_lines = [(saved, shown) for saved, shown, _ in checks if "\n" in shown]
    assert with_lines, "the reply never reached a second line while it streamed"
    for saved, shown, state in checks:
        assert state == "streaming" and shown.startswith(saved)
        unsaved = shown[len(saved):]
        assert "\n" not in unsaved and len(unsaved) < 450  # at most the line being written


def test_multiline_prompt_and_the_chat_list_rename_search_delete(make_app, isolated_home):
    from localllm.tui.screens.dialogs import TextPromptDialog

    app = make_app()

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            # Ctrl+J starts a new line; Enter sends both lines as one message.
            app.chat.prompt.focus()
            await pilot.press("O", "n", "e", "ctrl+j", "T", "w", "o", "enter")
            await wait_reply_done(pilot)
            first = app.chat.conversation.id
            assert app.store.messages(first)[0].content == "One\nTwo"
            await pilot.press("ctrl+n")
            await send(pilot, "Three")
            await wait_reply_done(pilot)
            # Rename the current chat with F2.
            await pilot.press("f2")
            dialog = await wait_screen(pilot, TextPromptDialog)
            dialog.query_one("#dialog-input").value = "Numbers"
            await pilot.press("enter")
            await pilot.pause()
            assert app.store.get(app.chat.conversation.id).title == "Numbers"
            # Search narrows the list to chats whose title or messages match.
            await pilot.press("ctrl+f")
            await pilot.press(*"two")
            await pilot.pause()
            options = app.chat.query_one("#conversation-options")
            assert [options.get_option_at_index(i).prompt for i in range(options.option_count)] == ["One"]
            # Delete from the list (Delete, then confirm); the open chat is left alone.
            options.focus()
            await pilot.press("delete")
            await wait_screen(pilot, ConfirmDialog)
            await pilot.press("y")
            await pilot.pause()
            assert app.store.get(first) is None and app.store.messages(first) == []
            assert app.chat.conversation is not None and app.chat.conversation.title == "Numbers"

    run(scenario())


def test_sending_in_a_chat_with_another_context_size_reloads_then_replies(make_app, isolated_home):
    from localllm.tui.store import ConversationSettings

    store = ConversationStore.in_home(isolated_home)
    small = store.create("", ConversationSettings(temperature=0.0, max_tokens=16, ctx_size=256), title="Small context")
    store.close()
    app = make_app()

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await pilot.press("ctrl+n")
            assert app.model.n_ctx == 512
            options = app.chat.query_one("#conversation-options")
            options.focus()
            await pilot.press("enter")  # the only chat in the list
            await pilot.pause()
            assert app.chat.conversation.id == small.id
            await send(pilot, "Once upon a time")
            await wait_for(pilot, lambda: app.model is not None and app.model.n_ctx == 256)
            await wait_reply_done(pilot)
            assert app.chat.chat_view.last_reply().state == "done" and "/256" in screen_text(app)

    run(scenario())
