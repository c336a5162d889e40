"""Run the app under uvicorn: bind the socket ourselves (so a busy port is one clear
error, not a uvicorn traceback), say where we listen, and stop cleanly on Ctrl-C.
"""

from __future__ import annotations

import socket
import sys

from localllm.errors import UserError
from localllm.server.config import ServerConfig, is_loopback


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise UserError(f"port {port} on {host} is already in use (another localllm serve?): "
                            "stop it or choose another port with --port") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): check --host and --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def serve(config: ServerConfig, settings, *, log_level: str = "warning") -> None:
    """Serve until interrupted. Raises UserError for problems the user can fix."""
    import uvicorn

    from localllm.server.app import create_app

    app = create_app(config, settings)
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    if not is_loopback(config.host):
        print(f"localllm: warning: listening on {config.host}, reachable from other machines; "
              "requests need the API key", file=sys.stderr)
    where = url_for(config.host, port)
    print(f"localllm: serving on {where} (OpenAI API at {where}/v1, Ollama API at {where}/api); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=log_level, access_log=log_level in ("info", "debug"), lifespan="on",
        timeout_graceful_shutdown=5, server_header=False,
    ))
    server.run(sockets=[sock])
