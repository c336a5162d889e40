"""The model picker: pulled models with their size and quantization, and a box to pull
a new one with a progress bar. Dismisses with the chosen model's name, or None."""

from __future__ import annotations

import threading
from functools import partial

from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, ProgressBar
from textual.widgets.option_list import Option

from localllm.tui.messages import PullFinished, PullProgressed
from localllm.tui.widgets.inbox import Inbox
from localllm.tui.workers import pull_model_worker


def human_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def default_list_models(settings):
    from localllm.registry import list_models

    return list_models(settings)


class ModelPickerScreen(ModalScreen["str | None"]):
    BINDINGS = [Binding("escape", "close", "Close / cancel pull")]

    def __init__(self, settings, current: str | None, *, list_models=default_list_models, pull=None, pull_name: str | None = None) -> None:
        super().__init__(classes="dialog-screen")
        self.settings = settings
        self.current = current
        self.list_models = list_models
        self.pull = pull
        self.pull_name = pull_name
        self._cancel: threading.Event | None = None

    def compose(self):
        with Vertical(classes="dialog", id="picker-dialog"):
            yield Label("Models", classes="dialog-title")
            yield OptionList(id="model-options")
            yield Input(placeholder="Pull a model: name, then Enter", id="pull-name")
            yield Label("", id="pull-status")
            yield ProgressBar(total=None, show_eta=False, id="pull-progress")
            yield Label("Enter uses the highlighted model · Esc closes", classes="dialog-hint")
        yield Inbox(self)

    def on_mount(self) -> None:
        self.query_one("#pull-progress").display = False
        self.refresh_models()
        if self.pull_name:
            self.query_one("#pull-name", Input).value = self.pull_name
            self.start_pull(self.pull_name)
        else:
            self.query_one("#model-options").focus()

    def refresh_models(self, highlight: str | None = None) -> None:
        options = self.query_one("#model-options", OptionList)
        options.clear_options()
        try:
            entries = list(self.list_models(self.settings))
        except Exception as e:
            options.add_option(Option(f"could not list models: {e}", disabled=True))
            return
        if not entries:
            options.add_option(Option("no models pulled yet: type a name below to pull one", disabled=True))
            return
        width = max(len(e.name) for e in entries)
        for e in sorted(entries, key=lambda e: e.name):
            mark = "●" if e.name == self.current else " "
            quant = e.quant or "–"
            options.add_option(Option(f"{mark} {e.name:<{width}}  {human_size(e.size_bytes):>9}  {quant}", id=e.name))
        target = highlight or self.current
        for index, e in enumerate(sorted(entries, key=lambda e: e.name)):
            if e.name == target:
                options.highlighted = index

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id and self._cancel is None:
            self.dismiss(event.option.id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        name = event.value.strip()
        if name and self._cancel is None:
            self.start_pull(name)

    def start_pull(self, name: str) -> None:
        self._cancel = threading.Event()
        self.query_one("#pull-status", Label).update(f"Pulling {name}…")
        bar = self.query_one("#pull-progress", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.run_worker(
            partial(pull_model_worker, name, self.settings, self.query_one(Inbox).post_message, self._cancel, self.pull),
            thread=True, group="pull", exit_on_error=False,
        )

    def on_inbox_pull_progressed(self, message: PullProgressed) -> None:
        bar = self.query_one("#pull-progress", ProgressBar)
        if message.total > 0:
            bar.update(total=message.total, progress=message.completed)
            detail = f"{human_size(message.completed)} of {human_size(message.total)}"
        else:
            detail = ""
        self.query_one("#pull-status", Label).update(f"{message.name}: {message.status} {detail}".rstrip())

    def on_inbox_pull_finished(self, message: PullFinished) -> None:
        self._cancel = None
        status = self.query_one("#pull-status", Label)
        self.query_one("#pull-progress").display = False
        if message.cancelled:
            status.update(f"Pull of {message.name} cancelled")
        elif message.error:
            status.update(f"Pull of {message.name} failed: {message.error}")
        else:
            name = message.entry.name if message.entry is not None else message.name
            self.refresh_models(highlight=name)
            self.dismiss(name)

    def on_unmount(self) -> None:
        if self._cancel is not None:  # the app is quitting: do not wait for a download
            self._cancel.set()

    def action_close(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.query_one("#pull-status", Label).update("Cancelling…")
        else:
            self.dismiss(None)
