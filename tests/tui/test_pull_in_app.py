"""Pulling a model from inside the app, through the real registry, from the registry
tests' fake Hugging Face hub on 127.0.0.1 serving the real stories260K file: the
progress bar moves, the pulled model loads and answers."""

from __future__ import annotations

import pytest

from localllm.tui.screens.dialogs import ConfirmDialog
from localllm.tui.screens.model_picker import ModelPickerScreen

from .conftest import run, screen_text, send, wait_for, wait_loaded, wait_reply_done, wait_screen

REPO = "test-owner/Stories-GGUF"


@pytest.fixture
def hub(stories_path, isolated_home, monkeypatch):
    registry = pytest.importorskip("localllm.registry")
    if not hasattr(registry, "pull_model"):
        pytest.skip("the registry has no pull_model yet")
    from registry.fake_hub import FakeHub  # tests/registry/fake_hub.py

    server = FakeHub().start()
    server.add_repo(REPO, {"stories260K-Q8_0.gguf": stories_path.read_bytes(), "README.md": b"# test\n"})
    # Progress is reported at most every REPORT_EVERY_S: the first half of the file must take
    # longer than that, so that a partial download is reported before the test's hold.
    server.faults.delay_s = 0.005
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    yield server
    server.stop()


def partial(look: tuple) -> bool:
    """Whether a look at the picker saw the bar showing a download under way."""
    shown, progress, total = look[:3]
    return bool(shown and total and 0 < progress < total)


def progress_watcher(app, seen: list):
    """Record the picker's progress bar and status text each time the test looks."""

    def look():
        screen = app.screen
        if isinstance(screen, ModelPickerScreen):
            bar = screen.query_one("#pull-progress")
            seen.append((bar.display, bar.progress, bar.total, str(screen.query_one("#pull-status").content)))
        return app.model is not None and not app.loading

    return look


@pytest.mark.timeout(120)
def test_missing_model_is_pulled_with_progress_then_chats(make_app, hub, isolated_home):
    from localllm.registry import list_models

    name = f"hf.co/{REPO}"
    app = make_app(model=name, list_models=list_models)
    seen = []
    # The hub pauses half-way through the file until the test has seen the bar there:
    # pilot.press waits for the app to go idle, which a fast download could outlast.
    hub.faults.hold_at = len(hub.repos[REPO].files["stories260K-Q8_0.gguf"]) // 2
    look = progress_watcher(app, seen)

    def loaded_releasing_the_hub_at_half():
        done = look()
        if any(map(partial, seen)):
            hub.faults.release.set()
        return done

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_screen(pilot, ConfirmDialog)
            assert "not pulled yet" in screen_text(app)
            await pilot.press("y")
            await wait_for(pilot, loaded_releasing_the_hub_at_half, timeout=60, step=0.01)
            await wait_loaded(pilot)
            assert app.model_name == f"{name}:Q8_0"
            await send(pilot, "Once upon a time")
            await wait_reply_done(pilot)
            assert "Lily" in app.chat.chat_view.last_reply().text
            assert "Stories-GGUF" in screen_text(app)

    run(scenario())
    downloading = [s for s in seen if partial(s)]
    assert downloading, f"the progress bar never showed a partial download: {seen[:5]}"
    assert any("downloading" in s[3] and "MiB" in s[3] for s in downloading)
    assert [e.name for e in list_models(app.settings)] == [f"{name}:Q8_0"]


@pytest.mark.timeout(120)
def test_pull_from_the_picker_and_a_failed_pull_stays_in_the_picker(make_app, hub, stories_path):
    from localllm.registry import list_models

    app = make_app(list_models=list_models)

    async def scenario():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_loaded(pilot)
            await pilot.press("ctrl+o")
            picker = await wait_screen(pilot, ModelPickerScreen)
            assert "no models pulled yet" in screen_text(app)
            picker.query_one("#pull-name").focus()
            picker.query_one("#pull-name").value = "hf.co/test-owner/No-Such-Repo"
            await pilot.press("enter")
            await wait_for(pilot, lambda: "failed" in str(picker.query_one("#pull-status").content))
            await pilot.pause()
            status = str(picker.query_one("#pull-status").content)
            assert app.screen is picker and "not found" in status, status
            assert "No-Such-Repo" in screen_text(app)
            picker.query_one("#pull-name").value = f"hf.co/{REPO}:Q8_0"
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.model_name == f"hf.co/{REPO}:Q8_0" and app.model is not None and not app.loading, timeout=60)
            # The picker lists it now, with its size and quant.
            await pilot.press("ctrl+o")
            await wait_screen(pilot, ModelPickerScreen)
            text = screen_text(app)
            assert f"hf.co/{REPO}:Q8_0" in text and "1.1 MiB" in text and "Q8_0" in text

    run(scenario())
