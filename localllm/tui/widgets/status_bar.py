"""The status bar: model, backend, context used against the limit (a meter that turns
to warning, then error colours before the context overflows), time to first token,
tokens per second and draft acceptance."""

from __future__ import annotations

from textual.containers import Horizontal
from textual.widgets import Label

# The chat refuses (or drops old turns) once the prompt leaves less than an eighth of the
# context for the reply, so the meter turns red before 7/8.
WARN_AT = 0.70
DANGER_AT = 0.85
METER_CELLS = 6


def short_count(n: int) -> str:
    """1234 -> '1.2k', 32768 -> '33k', 512 -> '512'."""
    if n < 1000:
        return str(n)
    if n < 10_000:
        return f"{n / 1000:.1f}k"
    return f"{round(n / 1000)}k"


def context_meter(used: int, limit: int, cells: int = METER_CELLS) -> tuple[str, str]:
    """The meter's text and its level: 'ok', 'warn' or 'danger'."""
    if limit <= 0:
        return "ctx " + "▱" * cells + " –", "ok"
    used = min(used, limit)  # the last sampled token is counted but never cached
    frac = used / limit
    filled = min(cells, round(frac * cells)) if used else 0
    level = "danger" if frac >= DANGER_AT else "warn" if frac >= WARN_AT else "ok"
    return f"ctx {'▰' * filled}{'▱' * (cells - filled)} {short_count(used)}/{short_count(limit)}", level


class StatusBar(Horizontal):
    """One line of figures under the chat; each field is its own label so CSS styles it."""

    def compose(self):
        yield Label("no model", id="status-model")
        yield Label("", id="status-backend")
        yield Label(context_meter(0, 0)[0], id="status-context")
        yield Label("TTFT –", id="status-ttft")
        yield Label("– tok/s", id="status-speed")
        yield Label("draft –", id="status-draft")

    def _set(self, field: str, text: str) -> None:
        self.query_one(f"#status-{field}", Label).update(text)

    def set_model(self, name: str | None, backend: str = "", note: str = "") -> None:
        from localllm.tui.workers import model_label

        self._set("model", note or (model_label(name) if name else "no model"))
        self._set("backend", backend)

    def set_context(self, used: int, limit: int) -> str:
        text, level = context_meter(used, limit)
        label = self.query_one("#status-context", Label)
        label.update(text)
        for name in ("ok", "warn", "danger"):
            label.set_class(name == level, f"-{name}")
        return level

    def set_speed(self, ttft_s: float | None, tokens_per_s: float | None) -> None:
        self._set("ttft", "TTFT –" if ttft_s is None else f"TTFT {ttft_s * 1000:.0f} ms")
        self._set("speed", "– tok/s" if not tokens_per_s else f"{tokens_per_s:.0f} tok/s")

    def set_draft(self, draft_tokens: int, accepted_tokens: int) -> None:
        if draft_tokens <= 0:
            self._set("draft", "draft –")
        else:
            self._set("draft", f"draft {100 * accepted_tokens / draft_tokens:.0f}%")
