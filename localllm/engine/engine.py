"""The engine: one thread owns the loaded model and serves requests from a queue.

Frontends call `submit`, get a `RequestHandle`, iterate its chunks from their own thread
and may `cancel` it at any time; the inference thread checks before every step. Up to
`parallel` requests run at once, decoding together in one forward pass per step
(continuous batching, `engine/batching.py`); the rest wait in order. Errors raised while
generating are re-raised in the consumer's thread.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Callable, Iterator

from localllm.backend.protocol import Backend, Cache
from localllm.engine.batching import RequestScheduler
from localllm.engine.generate import plain_decoding
from localllm.kvcache.overflow import check_context
from localllm.speculative.adaptive import AdaptiveDraftPolicy
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats

_END = object()


class ChunkChannel:
    """Chunks from the inference thread to one consumer, woken at most every
    `interval_s` while tokens keep coming.

    Waking the consumer for every token costs a context switch on a core that
    llama.cpp's compute threads are using; at thousands of tokens/s that was 7% of
    decode speed (benchmarks/bench_cpu_path.py). A chunk waits at most until the next
    token or the end of the request, and slow models still wake it for every token.
    """

    def __init__(self, interval_s: float = 0.004):
        self._items: collections.deque = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._interval = interval_s
        self._last_wake = 0.0

    def put(self, item, final: bool = False) -> None:
        with self._ready:
            self._items.append(item)
            now = time.perf_counter()
            if final or now - self._last_wake >= self._interval:
                self._last_wake = now
                self._ready.notify()

    def get_all(self) -> list:
        with self._ready:
            while not self._items:
                self._ready.wait()
            items = list(self._items)
            self._items.clear()
            return items


class RequestHandle:
    """The consumer's side of one request: iterate chunks; cancel whenever."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self._chunks = ChunkChannel()
        self._cancel = threading.Event()
        self.stats: GenerationStats | None = None
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def _finish(self, last: GenerationChunk | None) -> None:
        """The inference thread is done with this request: its last chunk, then the end."""
        if last is not None:
            self._chunks.put(last)
        self._chunks.put(_END, final=True)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[GenerationChunk]:
        while True:
            for item in self._chunks.get_all():
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    self.stats, self.finish_reason = item.stats, item.finish_reason
                yield item

    def text(self) -> str:
        """Wait for the whole generation and return its text."""
        return "".join(chunk.text for chunk in self)


class Engine:
    """Owns a backend and the thread that runs it. Use as a context manager or `close()`."""

    def __init__(self, backend: Backend, cache_manager=None, parallel: int = 1, producer_for=None):
        from localllm.kvcache import KVCacheManager

        self.backend = backend
        self.caches = cache_manager if cache_manager is not None else KVCacheManager(backend)
        # Up to `parallel` requests decode together (engine/batching.py); more wait here.
        self.parallel = max(1, parallel)
        # What speculative decoding learned about this model (forward costs, acceptance).
        self.draft_policy = AdaptiveDraftPolicy()
        # producer_for(request): a TokenProducer for requests that want one (speculative
        # decoding, as the request's `draft` says), None for plain decoding in the shared batch.
        if producer_for is None:
            producer_for = self.speculative_producer
        self.scheduler = RequestScheduler(backend, self.caches, self.parallel, check_prompt=check_context,
                                          producer_for=producer_for)
        self._waiting: collections.deque = collections.deque()
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="localllm-engine", daemon=True)
        self._thread.start()

    def speculative_producer(self, request: GenerationRequest):
        """The request's speculative producer (`localllm.speculative`), None (plain
        decoding) for --draft none. Its pending token and drafts ride in the shared batch
        with the other requests' tokens; "auto" weighs what drafts cost the whole batch."""
        # Imported here: speculative/ builds on engine.generate, so importing it at the top
        # would make `import localllm.speculative.verify` (before the engine) circular.
        from localllm.speculative.producer import producer_for as speculative_producer_for

        producer = speculative_producer_for(request.draft, self.draft_policy, request.max_tokens)
        return None if producer is plain_decoding else producer

    def submit(self, request: GenerationRequest, cache: Cache | None = None) -> RequestHandle:
        """Queue a generation. Without `cache`, the KV-cache manager lends one holding
        as much of the prompt as it can reuse (a previous turn, a shared system prompt);
        a `cache` given must hold a proper prefix of the prompt (an empty one will do)."""
        handle = RequestHandle(request)
        self._requests.put((handle, cache))
        return handle

    def call(self, fn: Callable[[Backend], object]) -> object:
        """Run `fn(backend)` on the inference thread and return its result."""
        done = threading.Event()
        box: list = []

        def job(backend):
            try:
                box.append((True, fn(backend)))
            except BaseException as e:  # handed back to the caller
                box.append((False, e))
            done.set()

        self._requests.put((job, None))
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _run(self) -> None:
        """Serve the queue: admit requests up to `parallel`, run jobs between steps, and
        step the running requests (all in one forward pass) until none is left."""
        scheduler, waiting = self.scheduler, self._waiting
        while True:
            block = not scheduler.running and not waiting
            items = []
            try:
                items.append(self._requests.get(block=block))
                while True:
                    items.append(self._requests.get_nowait())
            except queue.Empty:
                pass
            for item, cache in items:
                if item is None:
                    self._shutdown()
                    return
                if callable(item) and not isinstance(item, RequestHandle):
                    item(self.backend)
                else:
                    waiting.append((item, cache))
            while waiting and (scheduler.has_room or waiting[0][0].cancelled):
                scheduler.admit(*waiting.popleft())  # a cancelled one ends at once
            if scheduler.running:
                try:
                    scheduler.step()
                except Exception as e:  # a bug: fail the running requests, keep serving
                    scheduler.fail_all(e)

    def _shutdown(self) -> None:
        self.scheduler.close()
        while self._waiting:
            handle, _ = self._waiting.popleft()
            handle._finish(GenerationChunk("", None, finish_reason="cancelled",
                                           stats=GenerationStats(backend=self.backend.name)))

    def close(self) -> None:
        if self._thread.is_alive():
            self._requests.put((None, None))
            self._thread.join()
        self.caches.close()
        self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
