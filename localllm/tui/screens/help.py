"""The help screen: every key binding, grouped by where it works, built from the
bindings themselves so it cannot drift from what the keys do."""

from __future__ import annotations

from typing import Iterable

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

Section = tuple[str, list[tuple[str, str]]]


def key_label(keys: str) -> str:
    """'ctrl+n' -> 'Ctrl+N'; 'f2,r' -> 'F2 / r'."""
    labels = []
    for key in keys.split(","):
        parts = key.strip().split("+")
        *mods, last = parts
        last = last.upper() if (mods or len(last) > 1) and len(last) <= 3 else last.capitalize() if len(last) > 1 else last
        labels.append("+".join([m.capitalize() for m in mods] + [last]))
    return " / ".join(labels)


def binding_rows(bindings: Iterable) -> list[tuple[str, str]]:
    rows = []
    for b in bindings:
        if isinstance(b, tuple):
            b = Binding(*b)
        if b.description:
            rows.append((key_label(b.key), b.tooltip or b.description))
    return rows


def help_markdown(sections: list[Section], notes: str = "") -> str:
    lines = []
    for title, rows in sections:
        lines += [f"## {title}", ""]
        lines += [f"- `{key}` {what}" for key, what in rows]
        lines.append("")
    if notes:
        lines += [notes, ""]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "Close help")]

    def __init__(self, sections: list[Section], notes: str = "") -> None:
        super().__init__(classes="dialog-screen")
        self.text = help_markdown(sections, notes)

    def compose(self):
        with VerticalScroll(id="help-scroll"):
            yield Markdown(self.text, id="help-text")

    def on_mount(self) -> None:
        scroll = self.query_one("#help-scroll")
        scroll.border_title = "Keys"
        scroll.border_subtitle = "Esc closes"
        scroll.focus()
