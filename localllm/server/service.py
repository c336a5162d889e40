"""Running a `GenerationJob`: take a place in the bounded queue, get the model (loading it
if needed), build and check the prompt, wait for the engine, submit, and release all of
it when the engine is done with the request, whether it finished, failed or was cancelled.
"""

from __future__ import annotations

import asyncio
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
        try:
            lease = await self.models.acquire(job.model)
            prepared = await asyncio.to_thread(prepare, lease.model, job)
            t_queue = time.perf_counter()
            await lease.slot.gate.enter()
            started = True
        except BaseException as e:
            if lease is not None:
                lease.release(job.keep_alive_s, job.keep_alive_given)
            if isinstance(e, APIError):
                self.metrics.rejected.inc(reason="invalid" if e.status < 500 else "error")
            raise
        finally:
            self.admission.dequeue(started)

        model = lease.model
        outcome = GenerationOutcome(model=job.model, load_s=lease.load_wait_s,
                                    queued_s=time.perf_counter() - t_queue,
                                    dropped_messages=prepared.dropped_messages, truncated=prepared.truncated)
        try:
            handle = model.engine.submit(prepared.request)
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
