"""The chat's speculative-decoding switch takes effect: on, replies are drafted (the
status bar shows the acceptance rate); off, nothing is drafted; the text is the same."""

from __future__ import annotations

import dataclasses

import pytest

from localllm.tui.store import ConversationSettings

from .conftest import run, screen_text, send, wait_loaded, wait_reply_done

pytestmark = pytest.mark.timeout(120)

PROMPT = "Tim had a red ball. He liked to play with his red ball. One day, Tim"


def reply_with(make_app, tui_settings, speculative: bool):
    settings = dataclasses.replace(tui_settings, draft="prompt-lookup")
    from localllm.tui.app import ChatApp

    app = make_app(conversation_defaults=ConversationSettings(temperature=0.0, max_tokens=40, speculative=speculative))
    app = ChatApp(settings, app.initial_model, loader=app.loader, list_models=app.list_models,
                  conversation_defaults=app.conversation_defaults)

    async def scenario():
        async with app.run_test(size=(100, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, PROMPT)
            await wait_reply_done(pilot)
            msgs = app.store.messages(app.chat.conversation.id)
            return msgs[-1].content, msgs[-1].stats, screen_text(app)

    return run(scenario())


def test_the_chat_switch_turns_drafting_on_and_off(make_app, tui_settings):
    on_text, on_stats, on_screen = reply_with(make_app, tui_settings, True)
    off_text, off_stats, off_screen = reply_with(make_app, tui_settings, False)
    assert on_text == off_text
    assert on_stats["draft_tokens"] >= on_stats["accepted_tokens"] > 0
    assert off_stats["draft_tokens"] == 0
    rate = round(100 * on_stats["accepted_tokens"] / on_stats["draft_tokens"])
    assert f"draft {rate}%" in on_screen
    assert "draft –" in off_screen


def test_new_chats_follow_the_apps_draft_flag(tui_settings):
    from localllm.tui.app import ChatApp

    on = ChatApp(tui_settings, None, list_models=lambda s: [])
    off = ChatApp(dataclasses.replace(tui_settings, draft="none"), None, list_models=lambda s: [])
    assert on.conversation_defaults.speculative and not off.conversation_defaults.speculative
    assert on.draft_for(ConversationSettings(speculative=True)).mode == "auto"
    assert on.draft_for(ConversationSettings(speculative=False)).mode == "none"
    assert off.draft_for(ConversationSettings(speculative=True)).mode == "auto"
