"""Small formatting helpers: the context meter, sizes, key names, export to Markdown."""

from __future__ import annotations

from localllm.tui.export import conversation_markdown, slug
from localllm.tui.screens.help import key_label
from localllm.tui.screens.model_picker import human_size
from localllm.tui.store import Conversation, ConversationSettings, StoredMessage


def test_context_meter_levels():
    from localllm.tui.widgets.status_bar import context_meter, short_count

    assert context_meter(0, 0) == ("ctx ▱▱▱▱▱▱ –", "ok")
    assert context_meter(100, 4096)[1] == "ok"
    assert context_meter(3200, 4096) == ("ctx ▰▰▰▰▰▱ 3.2k/4.1k", "warn")
    assert context_meter(3800, 4096)[1] == "danger"
    assert context_meter(513, 512) == ("ctx ▰▰▰▰▰▰ 512/512", "danger")
    assert [short_count(n) for n in (999, 1234, 32768)] == ["999", "1.2k", "33k"]


def test_sizes_and_key_names():
    assert [human_size(n) for n in (512, 1_185_376, 807_694_464, 5 << 30)] == ["512 B", "1.1 MiB", "770.3 MiB", "5.0 GiB"]
    assert key_label("ctrl+n") == "Ctrl+N" and key_label("f2,r") == "F2 / r" and key_label("escape") == "Escape"


def test_export_markdown():
    conv = Conversation(1, "Rivers: a list!", "/models/llama.gguf", ConversationSettings(system_prompt="Be brief.", temperature=0.2))
    messages = [
        StoredMessage(1, 1, "user", "Name a river"),
        StoredMessage(2, 1, "assistant", "The Danube.\n", model="/models/llama.gguf"),
        StoredMessage(3, 1, "user", "Another"),
        StoredMessage(4, 1, "assistant", "The Rh", state="cancelled", model="/models/llama.gguf"),
    ]
    assert slug(conv.title) == "rivers-a-list" and slug("!!!") == "chat"
    assert conversation_markdown(conv, messages) == (
        "# Rivers: a list!\n\n*model: llama; temperature: 0.2, top-p: 0.95*\n\n## System\n\nBe brief.\n\n"
        "## You\n\nName a river\n\n## Assistant (llama)\n\nThe Danube.\n\n## You\n\nAnother\n\n"
        "## Assistant (llama) — stopped\n\nThe Rh\n"
    )


def test_status_bar_fields():
    import asyncio

    from textual.app import App

    from localllm.tui.widgets.status_bar import StatusBar

    class Bar(App):
        def compose(self):
            yield StatusBar()

    async def scenario():
        app = Bar()
        async with app.run_test(size=(100, 3)) as pilot:
            bar = app.query_one(StatusBar)
            bar.set_model("/models/qwen2.5-0.5b.gguf", "llamacpp")
            bar.set_speed(0.0123, 456.7)
            bar.set_draft(40, 30)
            level = bar.set_context(3900, 4096)
            await pilot.pause()
            text = " ".join(str(label.content) for label in bar.children)
            assert text == "qwen2.5-0.5b llamacpp ctx ▰▰▰▰▰▰ 3.9k/4.1k TTFT 12 ms 457 tok/s draft 75%"
            assert level == "danger" and bar.query_one("#status-context").has_class("-danger")
            bar.set_draft(0, 0)
            bar.set_speed(None, None)
            assert " ".join(str(label.content) for label in bar.children).endswith("TTFT – – tok/s draft –")

    asyncio.run(scenario())
