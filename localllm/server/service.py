"""Running a `GenerationJob`: take a place in the bounded queue, get the model (loading it
if needed), build and check the prompt, wait for the engine, submit, and release all of
it when the engine is done with the request, whether it finished, failed or was cancelled.
"""

from __future__ import annotations

import asyncio
import threading
import time

from localllm.server.admission import Admission
from localllm.server.errors import APIError, Overloaded
from localllm.server.jobs import GenerationJob, GenerationOutcome
from localllm.server.metrics import ServerMetrics
from localllm.server.models import ModelManager
from localllm.server.prompts import prepare
from localllm.server.stream import TokenStream


class RunningGeneration:
    """A submitted job: `pieces()` yields its text; `outcome` fills in as it ends."""

    def __init__(self, stream: TokenStream, outcome: GenerationOutcome, t_arrival: float):
        self.stream = stream
        self.outcome = outcome
        outcome.logprobs = stream.logprobs  # the same list: renderers read it as it grows
        self._t_arrival = t_arrival

    async def pieces(self):
        async for text in self.stream.pieces():
            yield text
        final = self.stream.final
        if final is not None:
            self.outcome.finish_reason = final.finish_reason
            if final.stats is not None:
                self.outcome.stats = final.stats
        self.outcome.total_s = time.perf_counter() - self._t_arrival

    async def text(self) -> str:
        parts = [piece async for piece in self.pieces()]
        self.outcome.text = "".join(parts)
        return self.outcome.text

    def cancel(self) -> None:
        if not self.stream.finished:
            self.stream.cancel()


def _release_when_done(future: asyncio.Future, lease, job: GenerationJob) -> None:
    def release(f: asyncio.Future) -> None:
        if not f.cancelled():
            f.exception()  # retrieved: an abandoned request's error has nobody to go to
        lease.release(job.keep_alive_s, job.keep_alive_given)

    future.add_done_callback(release)


class GenerationService:
    def __init__(self, models: ModelManager, metrics: ServerMetrics, admission: Admission):
        self.models = models
        self.metrics = metrics
        self.admission = admission
        self._running: set[TokenStream] = set()

    async def start(self, job: GenerationJob, t_arrival: float) -> RunningGeneration:
        """Submit `job` once its turn comes. Raises `APIError` (4xx/5xx) before submitting."""
        try:
            self.admission.enqueue()
        except Overloaded:
            self.metrics.rejected.inc(reason="queue_full")
            raise
        started = False
        lease = None
        preparing = None  # the worker thread's future while it renders and tokenizes
        cancel = threading.Event()
        try:
            lease = await self.models.acquire(job.model, job.ctx_size)
            preparing = asyncio.get_running_loop().run_in_executor(None, prepare, lease.model, job, cancel)
            prepared = await asyncio.shield(preparing)
            t_queue = time.perf_counter()
            await lease.slot.gate.enter()
            started = True
        except BaseException as e:
            if lease is not None:
                if preparing is not None and not preparing.done():
                    # Abandoned while its prompt is being prepared: the thread still uses
                    # the model, so the lease (and the model) lives until it stops.
                    cancel.set()
                    _release_when_done(preparing, lease, job)
                else:
                    lease.release(job.keep_alive_s, job.keep_alive_given)
            if isinstance(e, APIError):
                self.metrics.rejected.inc(reason="invalid" if e.status < 500 else "error")
            raise
        finally:
            self.admission.dequeue(started)

        model = lease.model
        outcome = GenerationOutcome(model=job.model, load_s=lease.load_wait_s,
                                    queued_s=time.perf_counter() - t_queue,
                                    dropped_messages=prepared.dropped_messages, truncated=prepared.truncated,
                                    tool_format=prepared.tool_format, token_bytes=model.tokenizer.token_bytes)
        try:
            handle = model.submit(prepared.request)
        except BaseException:
            lease.slot.gate.leave()
            lease.release(job.keep_alive_s, job.keep_alive_given)
            self.admission.finished(0.0)
            raise

        def done() -> None:
            self._running.discard(stream)
            lease.slot.gate.leave()
            lease.release(job.keep_alive_s, job.keep_alive_given)
            duration = time.perf_counter() - t_arrival
            self.admission.finished(duration)
            reason = handle.finish_reason or "error"
            self.metrics.observe_finished(job.api, reason, handle.stats)
            self.metrics.duration.observe(duration)

        stream = TokenStream(handle, t_arrival=t_arrival, observe_ttft=self.metrics.ttft.observe,
                             observe_itl=self.metrics.itl.observe, on_done=done)
        self._running.add(stream)
        return RunningGeneration(stream, outcome, t_arrival)

    def cancel_all(self) -> None:
        """At shutdown: stop every running generation."""
        for stream in list(self._running):
            stream.cancel()
