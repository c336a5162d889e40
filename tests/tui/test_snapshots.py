"""Snapshots (pytest-textual-snapshot) of the main screens at 80x24, dark and light.

They are deterministic: a stand-in model (no engine, no timings), conversations written
straight into the store, no clocks on screen. After a deliberate change to the look,
review the new SVGs and accept them with `pytest tests/tui --snapshot-update`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from localllm.tui.screens.help import HelpScreen
from localllm.tui.screens.model_picker import ModelPickerScreen
from localllm.tui.screens.settings import SettingsScreen
from localllm.tui.store import ConversationSettings, ConversationStore

from .conftest import wait_for, wait_screen

REPLY = """Here is a function that adds two numbers:

```python
def add(a: int, b: int) -> int:
    return a + b
```

Call it as `add(2, 3)`; it returns **5**."""


class StandInModel:
    """What the app reads from a loaded model, without loading one."""

    n_ctx = 4096
    backend_name = "llamacpp"

    def close(self):
        pass


def stand_in_loader(name, settings):
    return StandInModel()


MODELS = [
    SimpleNamespace(name="llama3.2:1b", size_bytes=807_694_464, quant="Q4_K_M"),
    SimpleNamespace(name="qwen2.5:0.5b", size_bytes=397_807_936, quant="Q4_K_M"),
    SimpleNamespace(name="stories260K", size_bytes=1_185_376, quant="F32"),
]


@pytest.fixture
def seeded_home(isolated_home):
    store = ConversationStore.in_home(isolated_home)
    old = store.create("qwen2.5:0.5b")
    store.add_message(old.id, "user", "Name three rivers in Europe")
    store.add_message(old.id, "assistant", "The Danube, the Rhine and the Loire.", model="qwen2.5:0.5b")
    conv = store.create("llama3.2:1b", ConversationSettings(temperature=0.7))
    store.add_message(conv.id, "user", "Write a Python function that adds two numbers")
    reply = store.add_message(conv.id, "assistant", REPLY, model="llama3.2:1b")
    store.update_message(reply.id, REPLY, stats={"prompt_tokens": 3300, "generated_tokens": 40})
    store.set_pref("last_conversation", str(conv.id))
    store.close()
    return isolated_home


def make(settings_home, model="llama3.2:1b", theme="textual-dark", **kwargs):
    from localllm.config import load_settings
    from localllm.tui.app import ChatApp

    kwargs.setdefault("list_models", lambda s: MODELS)
    kwargs.setdefault("resume", True)  # the seeded chat reopens
    return ChatApp(load_settings(), model, loader=stand_in_loader, theme=theme, **kwargs)


async def settle(pilot):
    await wait_for(pilot, lambda: pilot.app.model is not None and not pilot.app.loading)
    pilot.app.chat.prompt.cursor_blink = False
    await pilot.pause()


def test_chat_dark(snap_compare, seeded_home):
    assert snap_compare(make(seeded_home), terminal_size=(80, 24), run_before=settle)


def test_chat_light(snap_compare, seeded_home):
    assert snap_compare(make(seeded_home, theme="textual-light"), terminal_size=(80, 24), run_before=settle)


def test_chat_wide(snap_compare, seeded_home):
    assert snap_compare(make(seeded_home), terminal_size=(120, 36), run_before=settle)


def test_new_chat(snap_compare, isolated_home):
    assert snap_compare(make(isolated_home), terminal_size=(80, 24), run_before=settle)


def test_model_picker(snap_compare, seeded_home):
    async def open_picker(pilot):
        await settle(pilot)
        await pilot.press("ctrl+o")
        await wait_screen(pilot, ModelPickerScreen)

    assert snap_compare(make(seeded_home), terminal_size=(80, 24), run_before=open_picker)


def test_model_picker_pulling(snap_compare, seeded_home):
    def pull(name, settings, on_progress, cancel):
        on_progress(SimpleNamespace(status="downloading", digest="sha256:ab", total=400 << 20, completed=160 << 20))
        cancel.wait(30)  # set when the picker goes away with the app
        raise RuntimeError("cancelled")

    async def start_pull(pilot):
        await settle(pilot)
        await pilot.press("ctrl+o")
        await wait_screen(pilot, ModelPickerScreen)
        pilot.app.screen.query_one("#pull-name").focus()
        pilot.app.screen.query_one("#pull-name").value = "phi3.5:3.8b"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "160.0 MiB" in str(pilot.app.screen.query_one("#pull-status").content))
        pilot.app.screen.query_one("#pull-name").cursor_blink = False
        await pilot.pause()

    assert snap_compare(make(seeded_home, pull=pull), terminal_size=(80, 24), run_before=start_pull)


def test_settings(snap_compare, seeded_home):
    async def open_settings(pilot):
        await settle(pilot)
        await pilot.press("ctrl+s")
        await wait_screen(pilot, SettingsScreen)
        pilot.app.screen.query_one("#system_prompt").cursor_blink = False

    assert snap_compare(make(seeded_home), terminal_size=(80, 24), run_before=open_settings)


def test_help(snap_compare, seeded_home):
    async def open_help(pilot):
        await settle(pilot)
        await pilot.press("f1")
        await wait_screen(pilot, HelpScreen)

    assert snap_compare(make(seeded_home), terminal_size=(80, 24), run_before=open_help)
