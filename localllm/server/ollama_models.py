"""Ollama's model management shapes, answered from the registry and the model manager:
`GET /api/tags`, `POST /api/show`, `POST /api/pull` (NDJSON progress), `DELETE
/api/delete`, `GET /api/ps`, `GET /api/version`, `POST /api/copy`, `POST /api/create`.

The registry is imported lazily: these calls run its blocking work in threads, and a
pull stops (keeping its partial download) when its client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from localllm import __version__
from localllm.errors import UserError
from localllm.registry.errors import (
    DigestMismatchError, HubAccessError, HubUnavailableError, InsufficientDiskError, InvalidModelNameError,
    ModelNotFoundError, PullCancelled,
)
from localllm.server.config import FOREVER
from localllm.server.errors import APIError, BadRequest, Conflict, NotFound, send_error
from localllm.server.fields import Fields, read_json_object
from localllm.registry.names import is_path_syntax
from localllm.server.models import READY
from localllm.server.ollama_api import created_at
from localllm.server.responses import until_disconnect

# Registry errors to HTTP statuses.
_REGISTRY_STATUS: dict[type, int] = {
    ModelNotFoundError: 404, InvalidModelNameError: 400, HubAccessError: 403,
    HubUnavailableError: 502, DigestMismatchError: 502, InsufficientDiskError: 507,
    PullCancelled: 499,
}
FAR_FUTURE = "9999-12-31T23:59:59.000000Z"  # a model kept loaded forever


def registry_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    status = next((s for kind, s in _REGISTRY_STATUS.items() if isinstance(e, kind)),
                  400 if isinstance(e, UserError) else 500)
    return APIError(str(e), status=status)


def _registry():
    import localllm.registry as registry

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


def _details_from_facts(fmt: str, facts, quant: str) -> dict:
    if facts is None:
        return _details(fmt, "", 0, quant)
    return _details(fmt, facts.architecture, facts.parameters, quant)


def _details_of_loaded(info) -> dict:
    from localllm.registry.inventory import quant_label

    try:  # a header read (its arrays are skipped): quick even for large models
        quant = quant_label(info.path, info)
    except (UserError, OSError):
        quant = info.file_type
    return _details("gguf", info.architecture, info.n_params, quant)


async def tags(request: Request):
    """Pulled, imported and created models, then models loaded from a path (`serve
    --model PATH`), with details from their GGUF headers."""
    server = request.app.state.server
    try:
        described = await asyncio.to_thread(_registry().list_models_described, server.settings)
    except (UserError, OSError) as e:
        print(f"localllm: warning: cannot list models: {e}", file=sys.stderr)
        described = []
    models = [{
        "name": e.name, "model": e.name, "modified_at": created_at(e.modified), "size": e.size_bytes,
        "digest": e.digest, "details": _details_from_facts(e.format, facts, e.quant),
    } for e, facts in described]
    listed = {e.name for e, _ in described} | {str(e.path) for e, _ in described}
    for slot in server.models.slots():
        if slot.state != READY or slot.name in listed or slot.path in listed:
            continue
        listed.add(slot.name)
        info = slot.model.info
        try:
            size = os.path.getsize(info.path)
        except OSError:
            size = 0
        models.append({"name": slot.name, "model": slot.name, "modified_at": created_at(slot.loaded_at),
                       "size": size, "digest": "", "details": _details_of_loaded(info)})
    return JSONResponse({"models": models})


def _parameters_text(parameters: dict) -> str:
    """Ollama's `parameters` string: one `name value` line each (stop strings quoted)."""
    lines = []
    for name, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<30} {json.dumps(item) if isinstance(item, str) else item}")
    return "\n".join(lines)


async def show(request: Request):
    server = request.app.state.server
    name = _model_name(Fields(await read_json_object(request)))
    slot = server.models.find(name)
    try:
        if is_path_syntax(name) and not (server.models.allow_paths or name == server.models.pinned):
            raise NotFound(f"model {name[:200]!r} is a file path, and this server serves pulled models only",
                           code="model_not_found", param="model")
        d = await asyncio.to_thread(_registry().show_model, name, server.settings)
    except (UserError, OSError, APIError) as e:
        if slot is None or slot.state != READY:
            raise (registry_error(e) if not isinstance(e, OSError) else NotFound(str(e))) from None
        return JSONResponse(_show_loaded(slot))
    from localllm.registry.modelfile import ModelDefaults, render_modelfile

    defaults = ModelDefaults.from_json(d.defaults)
    arch = d.architecture
    info = {"general.architecture": arch, "general.parameter_count": d.parameters}
    if d.context_length:
        info[f"{arch}.context_length"] = d.context_length
    body = {
        "license": d.license or "", "modelfile": render_modelfile(str(d.path), defaults, d.license),
        "parameters": _parameters_text(defaults.parameters), "template": d.chat_template or "",
        "details": _details(d.format, arch, d.parameters, d.quant),
        "model_info": info, "capabilities": ["completion"], "modified_at": created_at(d.modified),
    }
    if defaults.system:
        body["system"] = defaults.system
    if defaults.messages:
        body["messages"] = [{"role": m.role, "content": m.content} for m in defaults.messages]
    return JSONResponse(body)


def _show_loaded(slot) -> dict:
    """What a model loaded from a plain GGUF path (not in the registry) says about itself."""
    info = slot.model.info
    arch = info.architecture
    model_info = {"general.architecture": arch, "general.parameter_count": info.n_params}
    if info.context_length:
        model_info[f"{arch}.context_length"] = info.context_length
    return {"license": str(info.metadata.get("general.license", "")), "modelfile": f"FROM {info.path}\n",
            "parameters": "", "template": info.chat_template or "",
            "details": _details_of_loaded(info), "model_info": model_info,
            "capabilities": ["completion"]}


async def ps(request: Request):
    server = request.app.state.server
    out = []
    for slot in server.models.slots():
        if slot.state != READY:
            continue
        model = slot.model
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
                    "details": _details_of_loaded(model.info),
                    "expires_at": expires, "size_vram": 0, "context_length": model.n_ctx})
    return JSONResponse({"models": out})


async def copy(request: Request):
    """Ollama's `POST /api/copy {"source", "destination"}`: 200 with no body."""
    server = request.app.state.server
    f = Fields(await read_json_object(request))
    source = f.text("source", required=True)
    destination = f.text("destination", required=True)
    try:
        await asyncio.to_thread(_registry().copy_model, source, destination, server.settings)
    except UserError as e:
        raise registry_error(e) from None
    return Response(status_code=200)


def _create_modelfile(f: Fields, allow_paths: bool):
    """The Modelfile an /api/create body describes: its `modelfile` text (Ollama's older
    API), then its `from`, `system`, `template`, `parameters`, `messages` and `license`."""
    from localllm.registry.modelfile import (
        ModelDefaults, Modelfile, ModelfileError, check_template, parameter_value, parse_modelfile,
    )
    from localllm.types import Message

    for key, why in (("files", "uploaded blobs are not supported: `localllm import FILE --name NAME` on the "
                               "server's machine, then FROM that name"),
                     ("adapters", "localllm does not load LoRA adapters"),
                     ("quantize", "localllm does not quantize models: pull or import the quant you want")):
        f.refuse_if_set(key, why)
    try:
        text = f.text("modelfile")
        base = parse_modelfile(text) if text else None
        source = f.text("from") or (base.source if base else None)
        if not source:
            raise BadRequest("'from' is required: the pulled model (or, with --allow-model-paths, the GGUF "
                             "file) to build on", param="from")
        if is_path_syntax(source) and not allow_paths:
            raise BadRequest(f"'from' {source[:200]!r} is a file path, and this server reads models from its "
                             "store only: FROM a pulled name, or start the server with --allow-model-paths",
                             param="from")
        if is_path_syntax(source) and not Path(source).expanduser().is_absolute():
            raise BadRequest(f"'from' {source[:200]!r}: give an absolute path (the server has no folder of yours "
                             "to resolve it against)", param="from")
        parameters = dict(base.defaults.parameters) if base else {}
        raw = f.obj("parameters")
        for key, value in (raw.data.items() if raw else ()):
            if key == "stop":
                values = value if isinstance(value, list) else [value]
                parameters["stop"] = [parameter_value("stop", v, "'parameters'") for v in values]
            else:
                parameters[key] = parameter_value(key, value, "'parameters'")
        messages = base.defaults.messages if base else ()
        if f.given("messages"):
            items = f.array("messages") or []
            if not all(isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                       and isinstance(m.get("content"), str) for m in items):
                raise BadRequest("'messages' must be objects with a role (system, user or assistant) and a "
                                 "string content", param="messages")
            messages = tuple(Message(m["role"], m["content"]) for m in items)
        template = f.text("template")
        license_ = f.raw("license")
        if isinstance(license_, list):
            license_ = "\n".join(str(x) for x in license_)
        elif license_ is not None and not isinstance(license_, str):
            raise BadRequest("'license' must be a string or an array of strings", param="license")
        defaults = ModelDefaults(
            parameters=parameters,
            system=f.text("system") if f.given("system") else (base.defaults.system if base else None),
            template=check_template(template) if template else (base.defaults.template if base else None),
            messages=messages,
        )
        return Modelfile(source, defaults, license_ if license_ is not None else (base.license if base else None))
    except ModelfileError as e:
        raise BadRequest(str(e)) from None


async def create(request: Request):
    """Ollama's `POST /api/create`: a new name over a pulled model's blobs, with its own
    parameters, system prompt, template, messages and licence. NDJSON progress unless
    `"stream": false`."""
    server = request.app.state.server
    f = Fields(await read_json_object(request))
    name = _model_name(f)
    modelfile = _create_modelfile(f, server.models.allow_paths)
    try:
        await asyncio.to_thread(_registry().create_model, name, modelfile, server.settings)
    except UserError as e:
        raise registry_error(e) from None
    if not f.flag("stream", True):
        return JSONResponse({"status": "success"})
    lines = [{"status": "using existing layers"}, {"status": "writing manifest"}, {"status": "success"}]
    return Response("".join(json.dumps(line) + "\n" for line in lines), media_type="application/x-ndjson")


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
            # A pull with nothing to fetch (a local model) says why in its status line.
            line = {"status": p.detail if p.status == "success" and p.detail else p.status}
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
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/create", create, methods=["POST"]),
    Route("/api/version", version, methods=["GET"]),
]
