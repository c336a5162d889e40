"""Fixtures for the chat app's tests: a private data folder, settings, a loader that
can slow the real stories260K model down (so a test can stop a reply mid-way), and
helpers to drive an app through Pilot without pytest-asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest

from localllm.config import load_settings
from localllm.tui.store import ConversationSettings

GREEDY = ConversationSettings(temperature=0.0, max_tokens=48)


def run(coro):
    """Run one Pilot session; the tests stay plain functions."""
    return asyncio.run(coro)


async def wait_for(pilot, condition, timeout: float = 30.0, step: float = 0.02) -> None:
    """Let the app run until `condition()` holds; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {getattr(condition, '__name__', condition)}")
        # A plain sleep: Pilot.pause also waits for the app to go idle, which it does not
        # while a reply streams.
        await asyncio.sleep(step)


async def wait_screen(pilot, screen_type, timeout: float = 30.0):
    """Wait until a screen of `screen_type` is on top and drawn; return it."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, screen_type) and app.screen.is_mounted, timeout)
    await pilot.pause()
    await pilot.pause()
    return app.screen


def screen_text(app) -> str:
    """The characters on screen (modal screens composited over the ones below)."""
    update = app.screen._compositor.render_update(full=True)
    return "\n".join("".join(seg.text for seg in strip) for strip in update.strips)


class SlowBackend:
    """The real backend, with a pause before every forward pass (one per token)."""

    def __init__(self, backend, delay_s: float):
        self._backend = backend
        self._delay_s = delay_s

    def forward(self, *args, **kwargs):
        time.sleep(self._delay_s)
        return self._backend.forward(*args, **kwargs)

    def forward_batch(self, items):
        time.sleep(self._delay_s)
        return self._backend.forward_batch(items)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def make_loader(delay_s: float = 0.0, calls: list | None = None):
    def loader(name, settings):
        from localllm.runtime import load_model

        if calls is not None:
            calls.append((name, settings.ctx_size))
        model = load_model(name, settings)
        if delay_s:
            slow = SlowBackend(model.engine.backend, delay_s)
            model.engine.backend = model.engine.scheduler.backend = slow
        return model

    return loader


@pytest.fixture
def tui_settings(isolated_home):
    # One thread: stories260K needs no more, and llama.cpp's spinning worker threads
    # slow down badly when other processes hold the cores.
    return load_settings(ctx_size=512, threads=1)


@pytest.fixture
def make_app(tui_settings, stories_path):
    """Build a ChatApp on stories260K (greedy, short replies) in the private home."""
    from localllm.tui.app import ChatApp

    def make(model: str | None = None, delay_s: float = 0.0, **kwargs):
        kwargs.setdefault("loader", make_loader(delay_s))
        kwargs.setdefault("list_models", lambda settings: [])
        kwargs.setdefault("conversation_defaults", GREEDY)
        return ChatApp(tui_settings, str(stories_path) if model is None else model, **kwargs)

    return make


async def wait_loaded(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.model is not None and not app.loading)
    await pilot.pause()


async def send(pilot, text: str, type_it: bool = False) -> None:
    """Put `text` in the prompt box (typed key by key if `type_it`) and press Enter."""
    prompt = pilot.app.chat.prompt
    prompt.focus()
    if type_it:
        await pilot.press(*text)
    else:
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
    await pilot.press("enter")


async def wait_reply_done(pilot) -> None:
    chat = pilot.app.chat
    await wait_for(pilot, lambda: chat.reply is None and chat.chat_view.last_reply() is not None
                   and chat.chat_view.last_reply().state != "streaming")
    await pilot.pause()
