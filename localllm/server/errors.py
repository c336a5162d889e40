"""Errors a client sees, in the shape its API expects.

Handlers raise `APIError` (or a subclass); `error_response` renders it as OpenAI's
`{"error": {"message", "type", "param", "code"}}` under `/v1`, as llama-server's
`{"error": {"code", "message", "type"}}` on its routes and as Ollama's `{"error": "..."}`
everywhere else. Messages say what was wrong and what to do.
"""

from __future__ import annotations

import json

from starlette.responses import Response

_OPENAI_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
    413: "invalid_request_error", 415: "invalid_request_error", 501: "invalid_request_error",
    503: "server_error",
}


class APIError(Exception):
    """An HTTP error with a one-line message; `param` names the offending field."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}


class BadRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401


class Forbidden(APIError):
    status = 403


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    status = 409


class PayloadTooLarge(APIError):
    status = 413


class Overloaded(APIError):
    """The bounded queue is full: come back after `retry_after` seconds."""

    status = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, code="queue_full", headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


# llama-server's own routes (localllm/server/llama_server_api.py) and its error types.
LLAMA_SERVER_PATHS = frozenset({"/completion", "/completions", "/infill"})
_LLAMA_SERVER_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                       501: "not_supported_error", 503: "unavailable_error"}


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def error_payload(path: str, err: APIError) -> dict:
    if is_openai_path(path):
        return {"error": {
            "message": err.message,
            "type": _OPENAI_TYPES.get(err.status, "server_error"),
            "param": err.param,
            "code": err.code,
        }}
    if path in LLAMA_SERVER_PATHS:
        kind = _LLAMA_SERVER_TYPES.get(err.status, "invalid_request_error" if err.status < 500 else "server_error")
        return {"error": {"code": err.status, "message": err.message, "type": kind}}
    return {"error": err.message}


def error_bytes(path: str, err: APIError) -> bytes:
    return json.dumps(error_payload(path, err), ensure_ascii=False).encode()


def error_response(path: str, err: APIError) -> Response:
    return Response(error_bytes(path, err), status_code=err.status, headers=err.headers,
                    media_type="application/json")


async def send_error(send, path: str, err: APIError) -> None:
    """Send `err` as a whole response from raw ASGI code (middleware, custom responses)."""
    body = error_bytes(path, err)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
