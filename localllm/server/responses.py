"""ASGI responses for work that must stop when its client goes away.

`GenerationResponse` runs a job and renders it through an API's `Renderer`, streamed
(SSE or NDJSON) or whole. A task watches the connection from the start: a client that
disconnects while its model loads, while it waits in the queue, or mid-generation
cancels the generation at once (the engine stops within a token) and frees its place,
for streaming and non-streaming requests alike.
"""

from __future__ import annotations

import json
import sys
from typing import Awaitable, Callable, Protocol

import anyio

from localllm.errors import UserError
from localllm.server.errors import APIError, BadRequest, send_error
from localllm.server.jobs import GenerationJob, GenerationOutcome


class Renderer(Protocol):
    """One API shape's way of writing a generation."""

    stream_media_type: str

    def stream_head(self, outcome: GenerationOutcome) -> bytes: ...

    def stream_piece(self, text: str) -> bytes: ...

    def stream_tail(self, outcome: GenerationOutcome) -> bytes: ...

    def stream_error(self, err: APIError) -> bytes: ...

    def whole(self, outcome: GenerationOutcome) -> dict: ...


def as_api_error(e: BaseException) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, UserError):
        return BadRequest(str(e))
    return APIError(f"generation failed: {type(e).__name__}: {e}", status=500, code="internal_error")


async def until_disconnect(receive, work: Callable[[], Awaitable[None]],
                           on_disconnect: Callable[[], None] = lambda: None) -> bool:
    """Run `work()`; if the client disconnects first, call `on_disconnect()` and cancel
    `work`. Returns True if the client went away."""
    gone = False
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    on_disconnect()
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        try:
            await work()
        finally:
            tg.cancel_scope.cancel()
    return gone


def _start(status: int, media_type: str, extra: dict[str, str]) -> dict:
    headers = [(b"content-type", media_type.encode()), (b"cache-control", b"no-cache")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    return {"type": "http.response.start", "status": status, "headers": headers}


class TextLimit(Protocol):
    """Watches the text as it is generated and may end it early (llama-server's
    `n_indent`, `t_max_predict_ms`): `feed` returns the text to pass on."""

    stopped: bool

    def feed(self, text: str) -> str: ...

    def flush(self) -> str: ...


class GenerationResponse:
    def __init__(self, service, job: GenerationJob, renderer: Renderer, *, stream: bool,
                 t_arrival: float, path: str, limit: TextLimit | None = None):
        self.service = service
        self.job = job
        self.renderer = renderer
        self.stream = stream
        self.t_arrival = t_arrival
        self.path = path
        self.limit = limit
        self._generation = None

    def _cancel(self) -> None:
        if self._generation is not None:
            self._generation.cancel()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await until_disconnect(receive, lambda: self._respond(send), self._cancel)
        finally:
            self._cancel()  # no-op once finished; covers errors and shutdown

    def _headers(self, outcome: GenerationOutcome) -> dict[str, str]:
        if outcome.dropped_messages:
            # The overflow policy let old turns go: say so rather than truncate silently.
            return {"x-localllm-dropped-messages": str(outcome.dropped_messages)}
        return {}

    async def _pieces(self, generation):
        """The generation's text, through the text limit where there is one."""
        limit = self.limit
        async for text in generation.pieces():
            if limit is not None:
                text = limit.feed(text)
                if limit.stopped:
                    generation.cancel()  # the engine stops within a token; the rest is dropped
            if text:
                yield text
        if limit is not None:
            rest = limit.flush()
            if rest:
                yield rest

    async def _respond(self, send) -> None:
        try:
            generation = await self.service.start(self.job, self.t_arrival)
        except Exception as e:
            await send_error(send, self.path, as_api_error(e))
            return
        self._generation = generation
        outcome = generation.outcome
        r = self.renderer
        if not self.stream:
            try:
                outcome.text = "".join([text async for text in self._pieces(generation)])
            except Exception as e:
                _log_unexpected(e)
                await send_error(send, self.path, as_api_error(e))
                return
            body = json.dumps(r.whole(outcome), ensure_ascii=False).encode()
            await send(_start(200, "application/json", self._headers(outcome) | {"content-length": str(len(body))}))
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return

        await send(_start(200, r.stream_media_type, self._headers(outcome) | {"x-accel-buffering": "no"}))
        head = r.stream_head(outcome)
        if head:
            await send({"type": "http.response.body", "body": head, "more_body": True})
        parts = []
        try:
            async for text in self._pieces(generation):
                parts.append(text)
                await send({"type": "http.response.body", "body": r.stream_piece(text), "more_body": True})
            outcome.text = "".join(parts)
            tail = r.stream_tail(outcome)
        except Exception as e:
            _log_unexpected(e)
            tail = r.stream_error(as_api_error(e))
        await send({"type": "http.response.body", "body": tail, "more_body": False})


def _log_unexpected(e: BaseException) -> None:
    if not isinstance(e, (APIError, UserError)):
        print(f"localllm: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
