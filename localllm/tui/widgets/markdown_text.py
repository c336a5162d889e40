"""`MarkdownText`: Markdown drawn as lines of one widget, built for text that streams.

Textual's own Markdown widget mounts a widget per block (several per list or code
fence), and Textual lays out every widget of the screen on each change, so the cost of
an update grows with the length of the reply and of the whole conversation. Here each
top-level block is rendered once with Rich (code blocks highlighted by Pygments) and its
lines are kept; an update re-parses and re-renders only the block still being written.
Layout sees one widget per message, and painting reads the cached lines it needs.

Colours follow the app's theme: the Rich styles are derived from it, and a theme change
re-renders.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from rich.markdown import Markdown as RichMarkdown
from rich.segment import Segment
from rich.theme import Theme as RichTheme
from textual.color import Color
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

PARSER = MarkdownIt("gfm-like")


def split_blocks(text: str) -> tuple[list[str], str]:
    """(complete top-level blocks, the last block, still open). Blocks keep their own
    trailing blank lines; joined back they give `text`."""
    lines = text.splitlines(keepends=True)
    starts = [t.map[0] for t in PARSER.parse(text) if t.level == 0 and t.map is not None and t.nesting >= 0]
    starts = sorted(set(starts))
    if len(starts) <= 1:
        return [], text
    starts[0] = 0  # leading blank lines belong to the first block
    blocks = ["".join(lines[a:b]) for a, b in zip(starts, starts[1:])]
    return blocks, "".join(lines[starts[-1]:])


def _hex(value, fallback: str) -> str:
    try:
        return Color.parse(value).hex if value else fallback
    except Exception:
        return fallback


def rich_theme_for(theme) -> tuple[RichTheme, str]:
    """Rich styles for Markdown in the colours of a Textual theme, and a Pygments style."""
    dark = bool(getattr(theme, "dark", True))
    primary = _hex(getattr(theme, "primary", None), "#0178D4")
    accent = _hex(getattr(theme, "accent", None), "#ffa62b")
    panel = _hex(getattr(theme, "panel", None) or getattr(theme, "surface", None), "#303030" if dark else "#D0D0D0")
    muted = "#a0a0a0" if dark else "#606060"
    code = accent if dark else primary  # the accent is too pale on a light panel
    styles = {
        "markdown.code": f"bold {code} on {panel}",
        "markdown.code_block": f"on {panel}",
        "markdown.h1": f"bold {primary}", "markdown.h1.border": primary,
        "markdown.h2": f"bold {primary}", "markdown.h3": "bold", "markdown.h4": "bold italic",
        "markdown.h5": "italic", "markdown.h6": "italic",
        "markdown.block_quote": f"italic {muted}", "markdown.hr": muted,
        "markdown.list": accent, "markdown.item.bullet": f"bold {accent}", "markdown.item.number": accent,
        "markdown.link": f"underline {primary}", "markdown.link_url": f"underline {primary}",
        "markdown.table.border": primary, "markdown.table.header": "bold",
    }
    return RichTheme(styles, inherit=True), ("monokai" if dark else "friendly")


class ChatMarkdown(RichMarkdown):
    """Markdown as chat apps show it: a single newline breaks the line (a poem, an
    address, a list of steps without bullets stay as written) instead of joining the
    lines into one paragraph, as CommonMark would."""

    def __init__(self, markup: str, **kwargs) -> None:
        super().__init__(markup, **kwargs)
        for token in self.parsed:
            for child in token.children or ():
                if child.type == "softbreak":
                    child.type = "hardbreak"


class MarkdownText(Widget):
    """Markdown text; `update(text)` replaces it, cheaply when it extends the old text."""

    DEFAULT_CSS = "MarkdownText { height: auto; }"

    def __init__(self, text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._text = ""
        self._blocks: list[str] = []  # complete blocks
        self._tail = ""  # the open block
        self._rendered: list[list[Strip]] = []  # lines of each complete block, at `_width`
        self._tail_lines: list[Strip] | None = None
        self._width = 0
        self._lines: list[Strip] | None = None  # everything, flattened
        self.update(text)

    @property
    def text(self) -> str:
        return self._text

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda theme: self._invalidate(everything=True))

    def update(self, text: str) -> None:
        if text == self._text:
            return
        if text.startswith(self._text) and self._text:
            settled_len = len(self._text) - len(self._tail)
            new_blocks, tail = split_blocks(text[settled_len:])
        else:
            self._blocks, self._rendered = [], []
            new_blocks, tail = split_blocks(text)
        self._text = text
        self._blocks.extend(new_blocks)
        self._tail = tail
        self._tail_lines = None
        self._lines = None
        self.refresh(layout=True)

    def _invalidate(self, everything: bool = False) -> None:
        if everything:
            self._rendered = []
        self._tail_lines = None
        self._lines = None
        self.refresh(layout=True)

    def _render_block(self, source: str, width: int) -> list[Strip]:
        console = self.app.console
        theme, code_theme = rich_theme_for(self.app.current_theme)
        options = console.options.update(width=width, height=None, highlight=False)
        with console.use_theme(theme):
            lines = console.render_lines(ChatMarkdown(source, code_theme=code_theme), options, pad=True)
        return [Strip(Segment.adjust_line_length(line, width), width) for line in lines]

    def _all_lines(self, width: int) -> list[Strip]:
        if width != self._width:
            self._width, self._rendered, self._tail_lines, self._lines = width, [], None, None
        if self._lines is not None:
            return self._lines
        while len(self._rendered) < len(self._blocks):
            self._rendered.append(self._render_block(self._blocks[len(self._rendered)], width))
        if self._tail_lines is None:
            self._tail_lines = self._render_block(self._tail, width) if self._tail.strip() else []
        lines: list[Strip] = []
        blank = Strip.blank(width)
        for part in [*self._rendered, self._tail_lines]:
            if not part:
                continue
            if lines:
                lines.append(blank)
            lines.extend(part)
        self._lines = lines
        return lines

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return container.width

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._all_lines(width)) if width > 0 else 0

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        lines = self._all_lines(width)
        if y >= len(lines):
            return Strip.blank(width, self.rich_style)
        return lines[y].apply_style(self.rich_style)
