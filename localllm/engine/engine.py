"""The engine: one thread owns the loaded model and serves requests from a queue.

Frontends call `submit`, get a `RequestHandle`, iterate its chunks from their own thread
and may `cancel` it at any time; the inference thread checks after every token. Errors
raised while generating are re-raised in the consumer's thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

from localllm.backend.protocol import Backend, Cache
from localllm.engine.generate import generate
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats

_END = object()


class RequestHandle:
    """The consumer's side of one request: iterate chunks; cancel whenever."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
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
            item = self._chunks.get()
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

    def __init__(self, backend: Backend):
        self.backend = backend
        self._requests: queue.Queue = queue.Queue()
        self._session_cache: Cache | None = None
        self._thread = threading.Thread(target=self._run, name="localllm-engine", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest, cache: Cache | None = None) -> RequestHandle:
        """Queue a generation. Without `cache`, the engine's session cache is used, so
        consecutive requests that share a prefix reuse it."""
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
            if cache is None:
                if self._session_cache is None:
                    self._session_cache = self.backend.new_cache()
                cache = self._session_cache
            for chunk in generate(self.backend, cache, handle.request, handle._cancel.is_set):
                out.put(chunk)
        except BaseException as e:
            out.put(e)
        finally:
            out.put(_END)

    def close(self) -> None:
        if self._thread.is_alive():
            self._requests.put((None, None))
            self._thread.join()
        if self._session_cache is not None:
            self._session_cache.close()
            self._session_cache = None
        self.backend.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
