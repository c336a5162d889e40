"""The streaming machinery on its own: `MarkdownText` renders the same whether the text
arrives at once or piece by piece, and the `Inbox` merges a burst of updates into a few
screen updates without losing the end of the text."""

from __future__ import annotations

import asyncio
import threading

from textual.app import App
from textual.containers import VerticalScroll

from localllm.tui.messages import ReplyDelta, ReplyFinished
from localllm.tui.widgets.inbox import Inbox
from localllm.tui.widgets.markdown_text import MarkdownText, split_blocks

from .conftest import run

DOC = """# Title

Some *emphasis* and `code`, then a list:

- one
- two

```python
def f(x):
    return x * 2
```

| a | b |
|---|---|
| 1 | 2 |

> quoted
last paragraph without a newline"""


def test_split_blocks_keeps_the_text_and_leaves_the_last_block_open():
    blocks, tail = split_blocks(DOC)
    assert "".join(blocks) + tail == DOC
    assert blocks[0] == "# Title\n\n" and tail.startswith("> quoted")
    assert split_blocks("just one paragraph") == ([], "just one paragraph")
    # An unclosed fence stays open: it is the tail until it closes.
    blocks, tail = split_blocks("intro\n\n```\ncode\n")
    assert blocks == ["intro\n\n"] and tail == "```\ncode\n"


class Viewer(App):
    def compose(self):
        with VerticalScroll():
            yield MarkdownText(id="whole")
            yield MarkdownText(id="streamed")


def lines_of(widget: MarkdownText) -> list[str]:
    return [strip.text for strip in widget._all_lines(widget.size.width)]


def test_streamed_text_renders_like_the_whole_text():
    async def scenario():
        app = Viewer()
        async with app.run_test(size=(60, 80)) as pilot:
            whole, streamed = app.query_one("#whole"), app.query_one("#streamed")
            whole.update(DOC)
            for end in range(3, len(DOC) + 3, 3):
                streamed.update(DOC[:end])
            await pilot.pause()
            assert streamed.text == DOC
            assert lines_of(streamed) == lines_of(whole)
            text = "\n".join(lines_of(whole))
            assert "Title" in text and "def f(x):" in text and "quoted" in text
            # A rewrite that is not an extension starts over.
            streamed.update("other text")
            await pilot.pause()
            assert [line.strip() for line in lines_of(streamed)] == ["other text"]
            # Height follows the text.
            assert whole.size.height == len(lines_of(whole))
            # A theme change re-renders, in the new colours.
            before = [strip for strip in whole._all_lines(whole.size.width)]
            app.theme = "textual-light"
            await pilot.pause()
            after = whole._all_lines(whole.size.width)
            assert [s.text for s in after] == [s.text for s in before]
            assert [list(s) for s in after] != [list(s) for s in before]

    run(scenario())


class InboxApp(App):
    def __init__(self):
        super().__init__()
        self.applied: list[str] = []
        self.finished: list[str] = []

    def compose(self):
        yield Inbox(self)

    async def on_inbox_reply_delta(self, message: ReplyDelta) -> None:
        self.applied.append(message.text)
        await asyncio.sleep(0.005)  # a slow screen: updates pile up meanwhile

    def on_inbox_reply_finished(self, message: ReplyFinished) -> None:
        self.finished.append(message.text)


def test_inbox_coalesces_a_burst_from_a_thread():
    async def scenario():
        app = InboxApp()
        async with app.run_test():
            inbox = app.query_one(Inbox)
            pieces = [f"w{i} " for i in range(3000)]

            def worker():
                text = ""
                for i, piece in enumerate(pieces):
                    text += piece
                    inbox.post_message(ReplyDelta(1, text, i + 1, 0.0, 0.0))
                inbox.post_message(ReplyFinished(1, text, "stop"))

            thread = threading.Thread(target=worker)
            thread.start()
            while not app.finished:
                await asyncio.sleep(0.01)
            thread.join()
            full = "".join(pieces)
            assert app.finished == [full]
            assert app.applied[-1] == full  # the newest update always arrives
            assert len(app.applied) < len(pieces) / 5  # and most were merged away
            assert all(full.startswith(t) for t in app.applied)

    run(scenario())
