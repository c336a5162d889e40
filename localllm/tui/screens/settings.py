"""Per-conversation settings: system prompt, temperature, top-p, max tokens, context
size, what to do when the chat outgrows the context, and the speculative-decoding
switch. Dismisses with the new settings, or None."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Switch, TextArea

from localllm.tui.store import ConversationSettings

FIELDS = (
    # (field, label, type, lower bound, upper bound)
    ("temperature", "Temperature (0 = greedy)", float, 0.0, 5.0),
    ("top_p", "Top-p", float, 0.0, 1.0),
    ("max_tokens", "Max tokens (0 = no limit)", int, 0, 1 << 20),
    ("ctx_size", "Context size (0 = default)", int, 0, 1 << 20),
)


def parse_field(name: str, text: str) -> float | int:
    """The value of one field, or ValueError naming the field and its range."""
    _, label, kind, low, high = next(f for f in FIELDS if f[0] == name)
    try:
        value = kind(text.strip())
    except ValueError:
        raise ValueError(f"{label}: {text.strip() or 'empty'} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high or (name == "ctx_size" and 0 < value < 16):
        raise ValueError(f"{label}: {value} is out of range ({low} to {high}{', at least 16' if name == 'ctx_size' else ''})")
    return value


class SettingsScreen(ModalScreen["ConversationSettings | None"]):
    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, settings: ConversationSettings, title: str, overflow: str = "refuse") -> None:
        super().__init__(classes="dialog-screen")
        self.initial = settings
        self.title_text = title
        self.overflow = overflow  # the policy in force for this chat

    def compose(self):
        s = self.initial
        with Vertical(classes="dialog", id="settings-dialog"):
            yield Label(f"Settings · {self.title_text}", classes="dialog-title")
            with VerticalScroll(id="settings-fields"):
                yield Label("System prompt")
                yield TextArea(s.system_prompt, id="system_prompt", soft_wrap=True)
                for name, label, kind, _, _ in FIELDS:
                    with Horizontal(classes="settings-row"):
                        yield Label(label, classes="settings-label")
                        yield Input(str(getattr(s, name)), id=name, type="number" if kind is float else "integer")
                with Horizontal(classes="settings-row"):
                    yield Label("Drop oldest turns when full", classes="settings-label")
                    yield Switch(self.overflow == "drop-oldest", id="drop_oldest")
                with Horizontal(classes="settings-row"):
                    yield Label("Speculative decoding", classes="settings-label")
                    yield Switch(s.speculative, id="speculative")
                yield Label("Speculative decoding (prompt lookup) drafts tokens from the chat and checks them in "
                            "one pass: the same reply, sooner when it repeats or edits earlier text.",
                            classes="dialog-hint")
            yield Label("", id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save", variant="primary", id="save", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#system_prompt").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        values: dict = {"system_prompt": self.query_one("#system_prompt", TextArea).text}
        try:
            for name, *_ in FIELDS:
                values[name] = parse_field(name, self.query_one(f"#{name}", Input).value)
        except ValueError as e:
            self.query_one("#settings-error", Label).update(str(e))
            return
        values["speculative"] = self.query_one("#speculative", Switch).value
        values["overflow"] = "drop-oldest" if self.query_one("#drop_oldest", Switch).value else "refuse"
        self.dismiss(ConversationSettings(**values))
