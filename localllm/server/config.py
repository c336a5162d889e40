"""Server configuration: one frozen `ServerConfig`, built once by `localllm serve` (or a
test) and passed down, plus the keep-alive duration syntax and the loopback test.

Keep-alive follows Ollama: a number of seconds or a Go-style duration ("30s", "5m",
"1h30m", "250ms"); a negative value keeps the model loaded forever, 0 unloads it as soon
as its last request ends.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field

from localllm.errors import UserError
from localllm.server import (
    DEFAULT_HOST, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE, DEFAULT_PORT,
)

FOREVER = None  # a keep-alive of "never unload"
MAX_FINITE_KEEP_ALIVE_S = 100 * 365 * 86400.0
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


class DurationError(ValueError):
    """A keep-alive value that is neither a number nor a duration such as "5m"."""


def parse_duration(value) -> float | None:
    """Seconds from a keep-alive value; None means forever (any negative value)."""
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            pos, total = 0, 0.0
            for m in _PART.finditer(body):
                if m.start() != pos:
                    break
                total += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(body) or not body:
                raise DurationError(f"{value!r} is not a duration: use seconds or e.g. '30s', '5m', '1h'") from None
            seconds = sign * total
    else:
        raise DurationError(f"{value!r} is not a duration")
    if math.isnan(seconds) or math.isinf(seconds):
        raise DurationError(f"{value!r} is not a duration")
    # Past a century a timer or a timestamp would overflow (time_t, asyncio): it is forever.
    return FOREVER if seconds < 0 or seconds > MAX_FINITE_KEEP_ALIVE_S else seconds


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "forever"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """What `localllm serve` is asked for; request-independent."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    preload: str | None = None  # model loaded at start and kept loaded
    keep_alive_s: float | None = 300.0  # default for models loaded on demand
    api_key: str | None = None
    max_loaded: int = 1  # models held in memory at once
    max_queue: int = DEFAULT_MAX_QUEUE  # generation requests waiting (not yet running)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cors_origins: tuple[str, ...] = ()  # exact origins allowed besides the built-in ones
    allowed_hosts: tuple[str, ...] = ()  # Host header names allowed besides loopback ones
    chat_template: str | None = None  # Jinja text overriding every model's own template
    allow_model_paths: bool = False  # clients may name GGUF files by path, not only pulled names
    force_load: bool = False  # load models even where the memory preflight says they will not fit
    extra: dict = field(default_factory=dict, compare=False)

    def validate(self) -> "ServerConfig":
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port {self.port} is not a TCP port: use 1-65535 (0 picks a free one)")
        if self.max_loaded < 1:
            raise UserError(f"--max-loaded {self.max_loaded} must be at least 1")
        if self.max_queue < 0:
            raise UserError(f"--max-queue {self.max_queue} must be 0 or more")
        if self.max_body_bytes < 1024:
            raise UserError(f"--max-body-bytes {self.max_body_bytes} is too small: use at least 1024")
        for origin in self.cors_origins:
            if origin.strip() in ("*", "null") or "*" in origin:
                raise UserError(
                    f"--cors-origin {origin!r} would let any web page use your models: "
                    "list exact origins such as https://app.example.com"
                )
            if "://" not in origin:
                raise UserError(f"--cors-origin {origin!r} is not an origin: write scheme://host[:port]")
        if not is_loopback(self.host) and not self.api_key:
            raise UserError(
                f"--host {self.host} would expose your models to the network without protection: "
                "set an API key with --api-key or LOCALLLM_API_KEY, or keep the default 127.0.0.1"
            )
        return self


def default_keep_alive_s() -> float | None:
    return parse_duration(DEFAULT_KEEP_ALIVE)
