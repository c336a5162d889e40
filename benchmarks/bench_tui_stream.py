"""Stream a synthetic reply at 2,000 tokens/s into the chat app and measure how far the
screen lags behind, whether anything is dropped, and how responsive the app stays.

The reply goes through the real path: `stream_reply_worker` on a thread worker posting
`ReplyDelta` messages, the chat screen appending to a Markdown bubble and saving lines
to SQLite. Only the model is a stand-in that emits a fixed Markdown text (paragraphs,
lists, code blocks) on a 2,000 tokens/s schedule. Two modes run side by side:

  coalesced   ReplyDelta.can_replace lets a newer update replace a queued older one
  per-token   the same messages with can_replace disabled (one UI update per token)

Figures: on-screen latency (from a token's emission to the end of the first repaint of
the screen after the update carrying it was applied: the compositor has then rendered
the new lines), event-loop lag (how late a 10 ms timer fires: what a key press would
wait), UI updates applied and repaints, and whether the final text on screen and in the
database equals what was emitted (nothing dropped). Run: python benchmarks/bench_tui_stream.py [--tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localllm.types import GenerationChunk, GenerationStats  # noqa: E402

PARAGRAPH = (
    "The engine streams tokens as they are sampled, and the chat view appends them to a Markdown "
    "document without parsing it again from the top. "
)
CODE = "```python\ndef fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n```\n\n"
LIST = "- first point, with `inline code`\n- second point, with **bold** text\n- third point\n\n"


def synthetic_tokens(n: int) -> list[str]:
    """`n` pieces of about four characters, cut from a Markdown text that repeats."""
    block = PARAGRAPH * 3 + "\n\n" + LIST + CODE + "## A heading\n\n"
    text = block * (n * 4 // len(block) + 2)
    return [text[i * 4:(i + 1) * 4] for i in range(n)]


class PacedHandle:
    """Chunks on a fixed schedule (`rate` per second), like an engine that fast."""

    def __init__(self, pieces: list[str], rate: float, emitted: list[float]):
        self.pieces, self.rate, self.emitted = pieces, rate, emitted
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self):
        t0 = time.perf_counter()
        for i, piece in enumerate(self.pieces):
            due = t0 + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0.0005:
                time.sleep(delay)
            self.emitted.append(time.perf_counter())
            yield GenerationChunk(piece, i)
        n = len(self.pieces)
        yield GenerationChunk("", None, "length", GenerationStats(backend="synthetic", prompt_tokens=3, generated_tokens=n))


def stand_in_model(pieces, rate, emitted):
    engine = SimpleNamespace(submit=lambda request: PacedHandle(pieces, rate, emitted))
    return SimpleNamespace(
        n_ctx=1 << 20, engine=engine, backend_name="synthetic", chat_tokens=lambda messages: [1, 2, 3],
        request=lambda tokens, sampling, max_tokens: None, close=lambda: None,
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def run_mode(coalesce: bool, n_tokens: int, rate: float) -> dict:
    from localllm.config import load_settings
    from localllm.tui import messages as tui_messages
    from localllm.tui.app import ChatApp
    from localllm.tui.screens.chat import ChatScreen
    from localllm.tui.store import ConversationStore
    from textual.screen import Screen

    home = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    os.environ["LOCALLLM_HOME"] = str(home)
    os.environ["LOCALLLM_CONFIG"] = str(home / "config.toml")
    pieces = synthetic_tokens(n_tokens)
    emitted: list[float] = []
    shown: list[tuple[float, int]] = []  # (time the handler finished, tokens shown)

    painted: list[float] = []  # end times of the screen's repaints
    original_handler = ChatScreen.on_inbox_reply_delta
    original_can_replace = tui_messages.ReplyDelta.can_replace
    original_refresh = Screen._compositor_refresh

    async def timed_handler(self, message):
        await original_handler(self, message)
        shown.append((time.perf_counter(), message.tokens))

    def timed_refresh(self):
        original_refresh(self)
        painted.append(time.perf_counter())

    ChatScreen.on_inbox_reply_delta = timed_handler
    Screen._compositor_refresh = timed_refresh
    if not coalesce:
        tui_messages.ReplyDelta.can_replace = lambda self, other: False
    app = ChatApp(load_settings(), "synthetic", loader=lambda name, s: stand_in_model(pieces, rate, emitted),
                  list_models=lambda s: [])
    lags: list[float] = []
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            while app.model is None:
                await pilot.pause(0.01)
            stop = asyncio.Event()

            async def probe():  # how late does a 10 ms timer fire while the reply streams?
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.010)
                    lags.append(time.perf_counter() - t - 0.010)

            probe_task = asyncio.create_task(probe())
            prompt = app.chat.prompt
            prompt.load_text("go")
            t_start = time.perf_counter()
            await pilot.press("enter")
            while len(emitted) < n_tokens:
                await asyncio.sleep(0.005)
            t_emitted = time.perf_counter()
            while app.chat.reply is not None:
                await asyncio.sleep(0.005)
            t_done = time.perf_counter()
            stop.set()
            await probe_task
            await pilot.pause()
            bubble = app.chat.chat_view.last_reply()
            on_screen = bubble.text
            conv_id = app.chat.conversation.id
    finally:
        ChatScreen.on_inbox_reply_delta = original_handler
        Screen._compositor_refresh = original_refresh
        tui_messages.ReplyDelta.can_replace = original_can_replace
    store = ConversationStore.in_home(home)
    saved = store.messages(conv_id)[-1].content
    store.close()
    expected = "".join(pieces)
    latencies = []
    for t, n in shown:
        i = bisect.bisect_left(painted, t)
        if n >= 1 and i < len(painted):
            latencies.append(painted[i] - emitted[n - 1])
    return {
        "mode": "coalesced" if coalesce else "per-token",
        "tokens": n_tokens,
        "emit_s": t_emitted - t_start,
        "drain_s": t_done - t_emitted,
        "updates": len(shown),
        "repaints": sum(1 for t in painted if t_start <= t <= t_done),
        "lat_p50": percentile(latencies, 0.50),
        "lat_p95": percentile(latencies, 0.95),
        "lat_max": max(latencies) if latencies else float("nan"),
        "lag_p95": percentile(lags, 0.95),
        "lag_max": max(lags) if lags else float("nan"),
        "intact": on_screen == expected and saved == expected and shown[-1][1] == n_tokens,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=10_000, help="tokens per run (default: 10000, 5 s at 2,000/s)")
    parser.add_argument("--rate", type=float, default=2000.0, help="tokens per second (default: 2000)")
    parser.add_argument("--per-token-tokens", type=int, default=0,
                        help="tokens for the per-token comparison run (default: as many as --tokens)")
    args = parser.parse_args()

    results = [
        asyncio.run(run_mode(True, args.tokens, args.rate)),
        asyncio.run(run_mode(False, args.per_token_tokens or args.tokens, args.rate)),
    ]
    ms = lambda s: f"{s * 1000:8.1f}"  # noqa: E731
    print(f"synthetic stream at {args.rate:.0f} tokens/s into the chat view (100x30, headless), {os.cpu_count()} CPUs")
    print()
    print(f"{'mode':<10} {'tokens':>6} {'emit s':>7} {'drain s':>8} {'updates':>8} {'repaints':>8} "
          f"{'lat p50 ms':>10} {'lat p95 ms':>10} {'lat max ms':>10} {'loop lag p95 ms':>15} {'lag max ms':>10} {'intact':>6}")
    for r in results:
        print(f"{r['mode']:<10} {r['tokens']:>6} {r['emit_s']:7.2f} {r['drain_s']:8.2f} {r['updates']:>8} {r['repaints']:>8} "
              f"{ms(r['lat_p50']):>10} {ms(r['lat_p95']):>10} "
              f"{ms(r['lat_max']):>10} {ms(r['lag_p95']):>15} {ms(r['lag_max']):>10} {'yes' if r['intact'] else 'NO':>6}")
    c, p = results
    print()
    print(f"ratio per-token / coalesced: latency p50 {p['lat_p50'] / c['lat_p50']:.1f}x, "
          f"p95 {p['lat_p95'] / c['lat_p95']:.1f}x, loop lag p95 {p['lag_p95'] / c['lag_p95']:.1f}x")
    return 0 if all(r["intact"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
