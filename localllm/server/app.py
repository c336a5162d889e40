"""`create_app`: the Starlette application, its shared state and its middleware.

`ServerState` is built once per app (no module globals): settings and config, the model
manager, the generation service, the bounded queue and the metrics. Routes reach it as
`request.app.state.server`. The app is plain ASGI: tests run it under uvicorn in a
thread, `localllm serve` in the main thread (`runner.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from localllm import __version__
from localllm.errors import UserError
from localllm.server import embeddings, llama_server_api, ollama_api, ollama_models, openai_api
from localllm.server.admission import Admission
from localllm.server.config import ServerConfig
from localllm.server.errors import APIError, error_response
from localllm.server.metrics import ServerMetrics
from localllm.server.models import ModelManager
from localllm.server.security import ApiKeyCheck, BodyLimit, CorsPolicy, HostCheck
from localllm.server.service import GenerationService


class ServerState:
    def __init__(self, config: ServerConfig, settings, *, loader: Callable | None = None,
                 resolver: Callable | None = None):
        self.config = config
        self.settings = settings
        self.metrics = ServerMetrics()
        self.admission = Admission(config.max_queue)
        self.models = ModelManager(settings, max_loaded=config.max_loaded, keep_alive_s=config.keep_alive_s,
                                   loader=loader, resolver=resolver, on_load=self.metrics.load_seconds.observe,
                                   chat_template=config.chat_template, allow_paths=config.allow_model_paths,
                                   pinned=config.preload, force_load=config.force_load)
        self.service = GenerationService(self.models, self.metrics, self.admission)
        self.metrics.bind_sources(lambda: self.admission.waiting, lambda: self.admission.running,
                                  self.models.counts)
        self.started = time.time()
        self.preload_error: str | None = None

    async def registry_entries(self) -> list:
        """Pulled models, or [] when the registry cannot list them (said on stderr)."""
        from localllm.registry import list_models

        try:
            return list(await asyncio.to_thread(list_models, self.settings))
        except (UserError, OSError) as e:
            print(f"localllm: warning: cannot list models: {e}", file=sys.stderr)
            return []

    async def preload(self, name: str) -> None:
        try:
            await self.models.preload(name)
        except Exception as e:
            message = e.message if isinstance(e, APIError) else str(e)
            self.preload_error = message
            print(f"localllm: error: could not preload {name}: {message}", file=sys.stderr)


# -- small routes -----------------------------------------------------------------------

async def root(request: Request):
    return PlainTextResponse("localllm is running")


async def health(request: Request):
    server: ServerState = request.app.state.server
    return JSONResponse({
        "status": "ok",
        "version": __version__,
        "uptime_s": round(time.time() - server.started, 3),
        "models": [{"name": s.name, "state": s.state, "requests": s.refs} for s in server.models.slots()],
        "queue_depth": server.admission.waiting,
        "running": server.admission.running,
        "preload_error": server.preload_error,
    })


async def metrics(request: Request):
    server: ServerState = request.app.state.server
    return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


# -- errors -----------------------------------------------------------------------------

async def _api_error(request: Request, exc: APIError):
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == 404:
        err = APIError(f"no route {request.method} {request.url.path}: see the server's documentation for the "
                       "OpenAI (/v1/...), Ollama (/api/...) and llama-server (/completion, /infill) endpoints",
                       status=404, code="not_found")
    elif exc.status_code == 405:
        err = APIError(f"{request.method} is not allowed on {request.url.path}", status=405,
                       code="method_not_allowed")
    else:
        err = APIError(str(exc.detail), status=exc.status_code)
    return error_response(request.url.path, err)


async def _internal_error(request: Request, exc: Exception):
    print(f"localllm: internal error on {request.method} {request.url.path}: {type(exc).__name__}: {exc}",
          file=sys.stderr)
    err = APIError(f"internal error: {type(exc).__name__}: {exc}", status=500, code="internal_error")
    return error_response(request.url.path, err)


# -- request metrics ----------------------------------------------------------------------

class RequestMetrics:
    """Counts every answered request by route (known routes only: bounded labels)."""

    def __init__(self, app, *, metrics: ServerMetrics, known: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.known = known

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def capture(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            path = scope["path"]
            route = path if path in self.known else ("/v1/models/{name}" if path.startswith("/v1/models/") else "other")
            self.metrics.http_requests.inc(route=route, method=scope["method"], status=str(status))


# -- the app ------------------------------------------------------------------------------

def create_app(config: ServerConfig, settings, *, loader: Callable | None = None,
               resolver: Callable | None = None) -> Starlette:
    """The ASGI app. `loader`/`resolver` replace `load_model`/`resolve_model_path` (tests)."""
    config = config.validate()
    state = ServerState(config, settings, loader=loader, resolver=resolver)
    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *openai_api.routes, *ollama_api.routes, *ollama_models.routes, *embeddings.routes,
        *llama_server_api.routes,
    ]
    known = frozenset(r.path for r in routes if "{" not in r.path)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        preload = None
        if config.preload:
            preload = asyncio.get_running_loop().create_task(state.preload(config.preload))
        try:
            yield
        finally:
            state.service.cancel_all()
            if preload is not None and not preload.done():
                await asyncio.wait({preload})
            await state.models.close()

    middleware = [
        Middleware(RequestMetrics, metrics=state.metrics, known=known),
        Middleware(HostCheck, bound_host=config.host, allowed_hosts=config.allowed_hosts),
        Middleware(CorsPolicy, extra_origins=config.cors_origins),
        Middleware(ApiKeyCheck, api_key=config.api_key),
        Middleware(BodyLimit, max_bytes=config.max_body_bytes),
    ]
    app = Starlette(
        routes=routes, middleware=middleware, lifespan=lifespan,
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.server = state
    return app
