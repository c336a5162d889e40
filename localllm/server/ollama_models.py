"""Ollama's model management shapes, answered from the registry and the model manager:
`GET /api/tags`, `POST /api/show`, `POST /api/pull` (NDJSON progress), `DELETE
/api/delete`, `GET /api/ps`, `GET /api/version`.

The registry is imported lazily: these calls run its blocking work in threads, and a
pull stops (keeping its partial download) when its client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localllm import __version__
from localllm.errors import UserError
from localllm.server.config import FOREVER
from localllm.server.errors import APIError, BadRequest, Conflict, NotFound, send_error
from localllm.server.fields import Fields, read_json_object
from localllm.server.models import READY
from localllm.server.ollama_api import created_at
from localllm.server.responses import until_disconnect

# Registry errors by class name (the registry is imported lazily) to HTTP statuses.
_REGISTRY_STATUS = {
    "ModelNotFoundError": 404, "InvalidModelNameError": 400, "HubAccessError": 403,
    "HubUnavailableError": 502, "DigestMismatchError": 502, "InsufficientDiskError": 507,
    "PullCancelled": 499,
}
FAR_FUTURE = "9999-12-31T23:59:59.000000Z"  # a model kept loaded forever


def registry_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    status = _REGISTRY_STATUS.get(type(e).__name__, 400 if isinstance(e, UserError) else 500)
    return APIError(str(e), status=status)


def _registry():
    try:
        import localllm.registry as registry
    except ImportError as e:  # pragma: no cover - only while the registry is being built
        raise APIError(f"the model registry is not available in this build ({e})", status=501) from None
    return registry


def human_count(n: int) -> str:
    if not n:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _model_name(f: Fields) -> str:
    name = f.text("model") or f.text("name")
    if not name:
        raise BadRequest("'model' is required", param="model")
    return name


def _details(fmt: str, family: str, parameters: int, quant: str) -> dict:
    return {"parent_model": "", "format": fmt, "family": family, "families": [family] if family else None,
            "parameter_size": human_count(parameters), "quantization_level": quant}


async def tags(request: Request):
    entries = await request.app.state.server.registry_entries()
    return JSONResponse({"models": [{
        "name": e.name, "model": e.name, "modified_at": created_at(e.modified), "size": e.size_bytes,
        "digest": e.digest, "details": _details(e.format, "", 0, e.quant),
    } for e in entries]})


async def show(request: Request):
    server = request.app.state.server
    name = _model_name(Fields(await read_json_object(request)))
    try:
        d = await asyncio.to_thread(_registry().show_model, name, server.settings)
    except (UserError, OSError) as e:
        slot = server.models.find(name)
        if slot is None or slot.state != READY:
            raise registry_error(e) if not isinstance(e, OSError) else NotFound(str(e)) from None
        return JSONResponse(_show_loaded(slot))
    arch = d.architecture
    info = {"general.architecture": arch, "general.parameter_count": d.parameters}
    if d.context_length:
        info[f"{arch}.context_length"] = d.context_length
    return JSONResponse({
        "license": d.license or "", "modelfile": f"FROM {d.path}\n", "parameters": "",
        "template": d.chat_template or "", "details": _details(d.format, arch, d.parameters, d.quant),
        "model_info": info, "capabilities": ["completion"], "modified_at": created_at(d.modified),
    })


def _show_loaded(slot) -> dict:
    """What a model loaded from a plain GGUF path (not in the registry) says about itself."""
    info = slot.model.info
    arch = info.architecture
    model_info = {"general.architecture": arch, "general.parameter_count": info.n_params}
    if info.context_length:
        model_info[f"{arch}.context_length"] = info.context_length
    return {"license": str(info.metadata.get("general.license", "")), "modelfile": f"FROM {info.path}\n",
            "parameters": "", "template": info.chat_template or "",
            "details": _details("gguf", arch, info.n_params, info.file_type), "model_info": model_info,
            "capabilities": ["completion"]}


async def ps(request: Request):
    server = request.app.state.server
    out = []
    for slot in server.models.slots():
        if slot.state != READY:
            continue
        model = slot.model
        info = model.info
        try:
            size = model.memory().total_bytes
        except Exception:
            size = 0
        if slot.expires_at is not None:
            expires = created_at(slot.expires_at)
        elif slot.keep_alive_s is FOREVER:
            expires = FAR_FUTURE
        else:  # in use: its keep-alive starts when the last request ends
            expires = created_at(time.time() + slot.keep_alive_s)
        out.append({"name": slot.name, "model": slot.name, "size": size, "digest": "",
                    "details": _details("gguf", info.architecture, info.n_params, info.file_type),
                    "expires_at": expires, "size_vram": 0, "context_length": model.n_ctx})
    return JSONResponse({"models": out})


async def version(request: Request):
    return JSONResponse({"version": __version__})


async def delete(request: Request):
    server = request.app.state.server
    name = _model_name(Fields(await read_json_object(request)))
    slot = server.models.find(name)
    if slot is not None and slot.refs > 0:
        raise Conflict(f"model '{name}' is generating for {slot.refs} request(s): try again when they finish")
    await server.models.unload(name)
    try:
        await asyncio.to_thread(_registry().remove_model, name, server.settings)
    except UserError as e:
        raise registry_error(e) from None
    return Response(status_code=200)


class PullResponse:
    """Runs a pull in a thread; streams its progress as NDJSON, or answers once at the end."""

    def __init__(self, server, name: str, stream: bool, path: str):
        self.server, self.name, self.stream, self.path = server, name, stream, path
        self.cancel = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await until_disconnect(receive, lambda: self._run(send), self.cancel.set)
        finally:
            self.cancel.set()  # a pull nobody waits for stops; its partial download is kept

    async def _run(self, send) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_progress(p) -> None:
            line = {"status": p.status}
            if p.digest:
                line["digest"] = p.digest if ":" in p.digest else "sha256:" + p.digest  # Ollama's spelling
            if p.total:
                line["total"] = p.total
                line["completed"] = p.completed or 0
            loop.call_soon_threadsafe(events.put_nowait, line)

        registry = _registry()
        pull = asyncio.ensure_future(asyncio.to_thread(
            registry.pull_model, self.name, self.server.settings, on_progress=on_progress, cancel=self.cancel))
        # A pull whose client left still ends (cancelled); its outcome is nobody's to log.
        pull.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not self.stream:
            try:
                await asyncio.shield(pull)
            except Exception as e:
                await send_error(send, self.path, registry_error(e))
                return
            body = b'{"status":"success"}'
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")]})
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, pull}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                await send({"type": "http.response.body", "body": (json.dumps(getter.result()) + "\n").encode(),
                            "more_body": True})
                continue
            getter.cancel()
            break
        while not events.empty():
            await send({"type": "http.response.body", "body": (json.dumps(events.get_nowait()) + "\n").encode(),
                        "more_body": True})
        try:
            pull.result()
            last = {"status": "success"}
        except Exception as e:
            last = {"error": registry_error(e).message}
        await send({"type": "http.response.body", "body": (json.dumps(last) + "\n").encode(), "more_body": False})


async def pull(request: Request):
    f = Fields(await read_json_object(request))
    name = _model_name(f)
    _registry()  # a 501 now rather than mid-stream
    return PullResponse(request.app.state.server, name, f.flag("stream", True), request.url.path)


routes = [
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
]
