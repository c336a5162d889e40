"""`localllm chat MODEL` starts a new conversation (the old one keeps its model);
`--resume` reopens the last one; a reply's single newlines stay line breaks."""

from __future__ import annotations

import pytest

from localllm.tui.store import ConversationStore

from .conftest import run, screen_text, send, wait_loaded, wait_reply_done

pytestmark = pytest.mark.timeout(120)

POEM = "Roses are red,\nviolets are blue,\nsugar is sweet."


@pytest.fixture
def old_chat(isolated_home):
    store = ConversationStore.in_home(isolated_home)
    conv = store.create("some-other-model:latest")
    store.add_message(conv.id, "user", "Write a poem")
    store.add_message(conv.id, "assistant", POEM, model="some-other-model:latest")
    store.set_pref("last_conversation", str(conv.id))
    store.close()
    return conv.id


def test_chat_with_a_model_starts_a_new_conversation(make_app, old_chat, isolated_home):
    app = make_app()

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            assert app.chat.conversation is None and not app.chat.chat_view.bubbles()
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            return app.chat.conversation.id

    new_id = run(scenario())
    assert new_id != old_chat
    store = ConversationStore.in_home(isolated_home)
    try:
        old = store.get(old_chat)
        assert old.model == "some-other-model:latest"  # not switched to the model given
        assert [m.role for m in store.messages(old_chat)] == ["user", "assistant"]
    finally:
        store.close()


def test_resume_reopens_the_last_conversation_and_keeps_line_breaks(make_app, old_chat):
    app = make_app(resume=True)

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            assert app.chat.conversation.id == old_chat
            # Each line of the chat view, without the chat list beside it and the bubble's edge.
            lines = [line.split("▕")[-1].strip().lstrip("▌").strip() for line in screen_text(app).splitlines()]
            assert any(line.startswith("Roses are red,") and "violets" not in line for line in lines), lines
            assert any(line.startswith("violets are blue,") for line in lines), lines

    run(scenario())


def test_a_created_models_parameters_and_system_prompt_apply_in_the_chat(make_app, stories_path, tui_settings):
    """num_predict 5 and SYSTEM from the model apply where the chat's settings are left
    at their defaults (stories260K has no template: the system prompt leads the prompt)."""
    from localllm.registry import create_model
    from localllm.registry.modelfile import parse_modelfile
    from localllm.tui.store import ConversationSettings

    create_model("teller", parse_modelfile(f"FROM {stories_path}\nPARAMETER num_predict 5\n"
                                           "PARAMETER temperature 0\nSYSTEM Lily had a cat.\n"), tui_settings)
    app = make_app("teller", conversation_defaults=ConversationSettings())

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            return app.store.messages(app.chat.conversation.id)[-1]

    reply = run(scenario())
    assert reply.stats["generated_tokens"] == 5
    from localllm.runtime import load_model
    from localllm.types import Message, SamplingParams

    model = load_model(str(stories_path), tui_settings)
    try:
        expected = model.chat([Message("system", "Lily had a cat."), Message("user", "Once upon a time")],
                              SamplingParams(temperature=0), max_tokens=5).text()
    finally:
        model.close()
    assert reply.content == expected
