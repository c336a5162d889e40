"""`localllm ps` and `localllm stop MODEL`: the models a running `localllm serve` holds
in memory, asked over its Ollama-shaped API (`GET /api/ps`; `keep_alive: 0` unloads).

The server is found at `--host`, else `$LOCALLLM_HOST`, else 127.0.0.1:11435; an API
key comes from `$LOCALLLM_API_KEY`, as `serve` takes it.
"""

from __future__ import annotations

import calendar
import os
import time

from localllm.errors import UserError

HOST_ENV = "LOCALLLM_HOST"


def configure(sub) -> None:
    ps = sub.add_parser("ps", help="list the models a running server has loaded", description=(
        "List the models a running `localllm serve` holds in memory: name, size, processor, context and "
        "until when it stays loaded."))
    _server_flags(ps)
    ps.set_defaults(handler=ps_command)

    stop = sub.add_parser("stop", help="unload a model from a running server",
                          description="Unload a model from a running `localllm serve` now (once its requests end).")
    stop.add_argument("model", metavar="MODEL")
    _server_flags(stop)
    stop.set_defaults(handler=stop_command)


def _server_flags(p) -> None:
    p.add_argument("--host", metavar="HOST:PORT", help=f"the server (default: ${HOST_ENV}, else 127.0.0.1:11435)")
    p.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")


def server_url(host: str | None) -> str:
    from localllm.server import DEFAULT_HOST, DEFAULT_PORT

    host = host or os.environ.get(HOST_ENV) or f"{DEFAULT_HOST}:{DEFAULT_PORT}"
    return host.rstrip("/") if "://" in host else f"http://{host.rstrip('/')}"


def _call(url: str, method: str, path: str, body: dict | None = None) -> dict:
    import httpx

    from localllm.server import API_KEY_ENV

    key = os.environ.get(API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url + path, json=body, headers=headers, timeout=60)
    except httpx.HTTPError as e:
        raise UserError(f"no localllm server answers at {url} ({type(e).__name__}): start one with "
                        f"`localllm serve`, or point at it with --host or ${HOST_ENV}") from None
    try:
        data = r.json()
    except ValueError:
        data = {}
    if r.status_code >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        if isinstance(message, dict):
            message = message.get("message")
        raise UserError(f"the server at {url} answered {r.status_code}: {message or r.text[:200]}")
    return data if isinstance(data, dict) else {}


def ps_command(args) -> int:
    from localllm.registry.diskspace import human_bytes

    url = server_url(args.host)
    models = _call(url, "GET", "/api/ps").get("models") or []
    rows = [("NAME", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")]
    for m in models:
        vram, size = int(m.get("size_vram") or 0), int(m.get("size") or 0)
        processor = "100% CPU" if not vram else ("100% GPU" if vram >= size else f"{100 * vram // size}% GPU")
        rows.append((str(m.get("name", "")), human_bytes(size), processor, str(m.get("context_length", "")),
                     _until(str(m.get("expires_at", "")))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _until(stamp: str) -> str:
    """Ollama's RFC 3339 expiry as words: '4 minutes from now', 'forever'."""
    if stamp.startswith("9999"):
        return "forever"
    try:
        t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return stamp or "-"
    from localllm.commands.models import span_words

    span = span_words(t - time.time(), smallest="second")
    return f"{span} from now" if span else "now"


def stop_command(args) -> int:
    url = server_url(args.host)
    loaded = _call(url, "GET", "/api/ps").get("models") or []
    names = {str(m.get("name")) for m in loaded} | {str(m.get("model")) for m in loaded}
    match = args.model if args.model in names else next(
        (n for n in names if n.split(":")[0] == args.model and n.endswith(":latest")), None)
    if match is None:
        listed = ", ".join(sorted(str(m.get("name")) for m in loaded)) or "none"
        raise UserError(f"{args.model} is not loaded in the server at {url} (loaded: {listed})")
    _call(url, "POST", "/api/generate", {"model": match, "keep_alive": 0})
    print(f"stopped {match}")
    return 0
