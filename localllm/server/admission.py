"""Who runs next: a FIFO gate per engine (as many generations at a time as the engine
decodes together, its `parallel`) and one bound on how many generation requests may
wait, server-wide.

Waiting happens here, in the event loop, rather than in the engine's own queue, so a
waiting request that is cancelled (its client went away) leaves at once and the queue
depth we report is exact. A full queue is answered 503 with a Retry-After estimated
from recent generation times.
"""

from __future__ import annotations

import asyncio
import collections
import math

from localllm.server.errors import Overloaded


class EngineGate:
    """Admits up to `capacity` generations at a time to an engine (set it to the engine's
    `parallel` once the model is loaded), first come first served."""

    def __init__(self, capacity: int = 1):
        self.capacity = max(1, capacity)
        self._running = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def busy(self) -> bool:
        return self._running >= self.capacity

    async def enter(self) -> None:
        if not self.busy and not self._waiters:
            self._running += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave()  # admitted and cancelled at once: hand the turn on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def leave(self) -> None:
        """A generation is over: admit the next waiter, if any."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return  # the place passes straight to the waiter
        self._running -= 1


class Admission:
    """Counts generation requests waiting (for a model load or an engine) and running."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting = 0
        self.running = 0
        self._avg_s = 2.0  # until measured

    def enqueue(self) -> None:
        """Take a place in the queue or raise `Overloaded` (503)."""
        if self.waiting >= self.max_queue and (self.running > 0 or self.waiting > 0):
            raise Overloaded(
                f"the server is busy: {self.waiting} requests are already waiting "
                f"(limit {self.max_queue}); retry after {self.retry_after()} s",
                retry_after=self.retry_after(),
            )
        self.waiting += 1

    def dequeue(self, started: bool) -> None:
        self.waiting -= 1
        if started:
            self.running += 1

    def finished(self, duration_s: float) -> None:
        self.running -= 1
        self._avg_s = 0.8 * self._avg_s + 0.2 * max(0.0, duration_s)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead times a recent average."""
        ahead = max(1, self.waiting + self.running)
        return int(min(120, max(1, math.ceil(self._avg_s * ahead))))
