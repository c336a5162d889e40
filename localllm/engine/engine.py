"""The engine: one thread owns the loaded model and serves requests from a queue.

Frontends call `submit`, get a `RequestHandle`, iterate its chunks from their own thread
and may `cancel` it at any time; the inference thread checks after every token. Errors
raised while generating are re-raised in the consumer's thread.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from typing import Callable, Iterator

from localllm.backend.protocol import Backend, Cache
from localllm.engine.generate import generate
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

    def __init__(self, backend: Backend, cache_manager=None):
        from localllm.kvcache import KVCacheManager

        self.backend = backend
        self.caches = cache_manager if cache_manager is not None else KVCacheManager(backend)
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="localllm-engine", daemon=True)
        self._thread.start()

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
        while True:
            item, cache = self._requests.get()
            if item is None:
                return
            if callable(item) and not isinstance(item, RequestHandle):
                item(self.backend)
                continue
            self._serve(item, cache)

    def _serve(self, handle: RequestHandle, cache: Cache | None) -> None:
        out = handle._chunks
        try:
            if handle.cancelled:
                out.put(GenerationChunk("", None, finish_reason="cancelled", stats=GenerationStats(backend=self.backend.name)))
                return
            lease = None
            request = handle.request
            if cache is None:
                lease = self.caches.acquire(request.prompt_tokens)
                cache = lease.cache
                if lease.prompt != list(request.prompt_tokens):
                    request = dataclasses.replace(request, prompt_tokens=tuple(lease.prompt))
            try:
                for chunk in generate(self.backend, cache, request, handle._cancel.is_set):
                    out.put(chunk)
            finally:
                if lease is not None:
                    self.caches.release(lease)
        except BaseException as e:
            out.put(e)
        finally:
            out.put(_END, final=True)

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
