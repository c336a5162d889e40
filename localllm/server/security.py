"""Safety by default, as ASGI middleware (outermost first in `app.py`):

- `HostCheck`: while bound to loopback, only requests whose `Host` is exactly a loopback
  name or address (localhost, 127.x.y.z, [::1], with an optional port) or a name the user
  allowed (`--allowed-host`) are served, so a web page on another name cannot reach the
  server through DNS rebinding (`127.0.0.1.nip.io`, `127.evil.example` and
  `127.0.0.1@evil.example` are other names).
- `CorsPolicy`: an allow-list of origins (any port of localhost, 127.0.0.1 and [::1],
  `vscode-webview://` and the configured ones), echoed back, never `*`; a request from
  any other origin is refused with 403 before it does anything (a plain form POST needs
  no preflight, so only answering without CORS headers would not be enough).
- `ApiKeyCheck`: when a key is set, every route but `/` and `/health` needs
  `Authorization: Bearer KEY` (or `X-API-Key: KEY`).
- `BodyLimit`: bodies larger than the limit get 413, by Content-Length or while read.
Errors take the shape of the API asked (`localllm.server.errors`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re

from localllm.server.config import is_loopback
from localllm.server.errors import Forbidden, PayloadTooLarge, Unauthorized, send_error

_LOCAL_ORIGIN = re.compile(r"^https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?$", re.IGNORECASE)
_VSCODE_ORIGIN = re.compile(r"^vscode-webview://[A-Za-z0-9.-]+$")
_OPEN_PATHS = ("/", "/health")
_METHODS = "GET, POST, DELETE, OPTIONS"
_ALLOWED_REQUEST_HEADERS = "authorization, content-type, x-api-key, x-stainless-lang, x-stainless-package-version, " \
                           "x-stainless-os, x-stainless-arch, x-stainless-runtime, x-stainless-runtime-version, " \
                           "x-stainless-retry-count, x-stainless-timeout, openai-organization, openai-project, user-agent"


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


# host[:port], where host is a bracketed IPv6 literal or a name/IPv4 address without
# anything a URL authority could hide another host behind (userinfo, paths, spaces).
_HOST_HEADER = re.compile(r"^(\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(\d{1,5}))?$")


def _host_name(host_header: str) -> str | None:
    """The host part of a Host header, lowercased; None when it is not host[:port]."""
    m = _HOST_HEADER.match(host_header.strip().lower())
    return m.group(1) if m else None


def is_loopback_host(host: str) -> bool:
    """localhost, an IPv4 address in 127.0.0.0/8 written as a dotted quad, or [::1]."""
    if host == "localhost":
        return True
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        return False
    # An IPv6 literal must come in brackets; an IPv4 one must not.
    return address.is_loopback and (address.version == 6) == host.startswith("[")


class HostCheck:
    def __init__(self, app, *, bound_host: str, allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.active = is_loopback(bound_host)
        self.allowed = {h.strip().lower() for h in allowed_hosts if h.strip()}

    def allows(self, host_header: str | None) -> bool:
        host = _host_name(host_header or "")
        return host is not None and (is_loopback_host(host) or host in self.allowed)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.active:
            host_header = _header(scope, b"host")
            if not self.allows(host_header):
                err = Forbidden(f"requests addressed to host {(host_header or '')[:100]!r} are refused: this server "
                                "answers only to localhost, 127.0.0.1 and [::1] (allow another name with "
                                "--allowed-host NAME)")
                await send_error(send, scope["path"], err)
                return
        await self.app(scope, receive, send)


class CorsPolicy:
    def __init__(self, app, *, extra_origins: tuple[str, ...] = ()):
        self.app = app
        self.extra = {o.rstrip("/").lower() for o in extra_origins}

    def allowed(self, origin: str) -> bool:
        return bool(_LOCAL_ORIGIN.match(origin) or _VSCODE_ORIGIN.match(origin)) or origin.lower() in self.extra

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        origin = _header(scope, b"origin")
        if origin is None:
            return await self.app(scope, receive, send)
        if not self.allowed(origin):
            err = Forbidden(f"origin {origin!r} is not allowed to use this server: start it with "
                            f"--cors-origin {origin} to allow it")
            await send_error(send, scope["path"], err)
            return
        cors = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = cors + [
                (b"access-control-allow-methods", _METHODS.encode()),
                (b"access-control-allow-headers", _ALLOWED_REQUEST_HEADERS.encode()),
                (b"access-control-max-age", b"600"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + cors)
            await send(message)

        await self.app(scope, receive, send_with_cors)


class ApiKeyCheck:
    def __init__(self, app, *, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    def _presented(self, scope) -> bytes | None:
        auth = _header(scope, b"authorization")
        if auth and auth[:7].lower() == "bearer ":
            return auth[7:].strip().encode("latin-1")
        key = _header(scope, b"x-api-key")
        return key.strip().encode("latin-1") if key else None

    async def __call__(self, scope, receive, send):
        if (self.key is None or scope["type"] != "http" or scope["method"] == "OPTIONS"
                or scope["path"] in _OPEN_PATHS):
            return await self.app(scope, receive, send)
        presented = self._presented(scope)
        if presented is None or not hmac.compare_digest(presented, self.key):
            what = "is missing" if presented is None else "is wrong"
            err = Unauthorized(f"the API key {what}: send it as 'Authorization: Bearer <key>'",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await send_error(send, scope["path"], err)
            return
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than this server's limit of {self.max_bytes} bytes "
                               "(set with --max-body-bytes)", code="body_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_bytes:
            await send_error(send, scope["path"], self._error())
            return
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(send, scope["path"], self._error())
