"""From the engine's blocking chunk iterator to the event loop, without blocking it.

One pump thread per running generation iterates the `RequestHandle` and appends chunks
to a deque; the event loop is woken only when it is actually waiting, so a fast model's
tokens arrive in batches instead of one loop wake-up each. Time to first token and the
gaps between tokens are measured here, where the tokens arrive from the engine.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import AsyncIterator, Callable

from localllm.types import GenerationChunk

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class TokenStream:
    """Pumps `handle` on a thread; `pieces()` yields its text, joined per wake-up.

    `on_done` runs on the event loop once the engine has finished with the request
    (normally, by error, or cancelled). `final` is the last chunk (finish reason, stats).
    """

    def __init__(self, handle, *, t_arrival: float, observe_ttft: Callable[[float], None],
                 observe_itl: Callable[[float], None], on_done: Callable[[], None]):
        self.handle = handle
        self.final: GenerationChunk | None = None
        self.logprobs: list = []  # TokenLogprob of each token so far, when the request asked
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future | None = None
        self._t_arrival = t_arrival
        self._observe_ttft = observe_ttft
        self._observe_itl = observe_itl
        self._on_done = on_done
        self.finished = False
        self._thread = threading.Thread(target=self._pump, name="localllm-stream", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the generation; the engine notices within a token."""
        self.handle.cancel()

    # -- pump thread ---------------------------------------------------------------------

    def _pump(self) -> None:
        t_prev = None
        try:
            for chunk in self.handle:
                if chunk.token is not None:
                    now = time.perf_counter()
                    if t_prev is None:
                        self._observe_ttft(now - self._t_arrival)
                    else:
                        self._observe_itl(now - t_prev)
                    t_prev = now
                self._push(chunk)
        except BaseException as e:  # handed to the consumer
            self._push(_Failure(e))
        finally:
            # Release (lease, metrics) before the consumer can see the end: callbacks run
            # in order, so a client that gets its response and asks /metrics at once
            # already finds this generation counted.
            try:
                self._loop.call_soon_threadsafe(self._done)
            except RuntimeError:  # the loop is gone (shutdown): nothing left to release
                pass
            self._push(_END)

    def _push(self, item) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:
                pass

    def _done(self) -> None:
        self.finished = True
        self._on_done()

    # -- event loop ----------------------------------------------------------------------

    async def _batches(self) -> AsyncIterator[list]:
        while True:
            with self._lock:
                if self._items:
                    batch = list(self._items)
                    self._items.clear()
                    waiter = None
                else:
                    batch = None
                    waiter = self._waiter = self._loop.create_future()
            if waiter is not None:
                await waiter
                continue
            yield batch

    async def pieces(self) -> AsyncIterator[str]:
        """The generated text, one non-empty piece per batch of chunks."""
        async for batch in self._batches():
            texts = []
            for item in batch:
                if item is _END:
                    if texts:
                        yield "".join(texts)
                    return
                if isinstance(item, _Failure):
                    if texts:
                        yield "".join(texts)
                    raise item.error
                if item.logprob is not None:
                    self.logprobs.append(item.logprob)
                if item.text:
                    texts.append(item.text)
                if item.finish_reason is not None:
                    self.final = item
            if texts:
                yield "".join(texts)
