"""`localllm serve`: a local OpenAI- and Ollama-compatible REST endpoint.

Listens on 127.0.0.1:11435 by default (next to Ollama's 11434, clear of llama-server's
8080). Another address needs an API key. Heavy imports (uvicorn, starlette, the engine)
happen only when the command runs.
"""

from __future__ import annotations

import os

from localllm.cli import add_runtime_flags
from localllm.server import (
    API_KEY_ENV, DEFAULT_HOST, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE, DEFAULT_PORT,
)


def configure(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve a local OpenAI- and Ollama-compatible API",
        description=(f"Serve models over HTTP for editor plugins, scripts and apps: OpenAI's /v1/chat/completions, "
                     f"/v1/completions, /v1/embeddings and /v1/models, Ollama's /api/chat, /api/generate, "
                     f"/api/embed, /api/tags, ..., llama-server's /completion and /infill, plus "
                     f"/health and /metrics. Listens on {DEFAULT_HOST}:{DEFAULT_PORT} by default."),
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default: {DEFAULT_HOST}; any other needs --api-key)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    p.add_argument("--model", metavar="MODEL", help="load this model at start and keep it loaded")
    p.add_argument("--keep-alive", default=DEFAULT_KEEP_ALIVE, metavar="DURATION",
                   help=f"how long an idle model loaded on demand stays in memory, e.g. 30s, 10m, 1h; "
                        f"-1 forever, 0 unload at once (default: {DEFAULT_KEEP_ALIVE})")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every request (default: ${API_KEY_ENV})")
    p.add_argument("--parallel", type=int, metavar="N",
                   help="requests decoded together per model, in one batch (default: 4 on 4+ cores, else 2); "
                        "more wait in the queue; each takes a context of KV memory")
    p.add_argument("--max-loaded", type=int, default=1, metavar="N", help="models held in memory at once (default: 1)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help=f"generation requests allowed to wait; more get 503 (default: {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body accepted (default: {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="also allow browser requests from ORIGIN, e.g. https://app.example.com (repeatable; "
                        "localhost origins and vscode-webview:// are always allowed)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the models' own")
    p.add_argument("--allow-model-paths", action="store_true",
                   help="let clients name GGUF files by path, not only pulled models (off: a path gets 404 "
                        "and the server looks at no file outside its store)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (repeatable; loopback names "
                        "and addresses always are): for a reverse proxy or a local DNS name")
    add_runtime_flags(p)
    p.set_defaults(handler=serve_command)


def serve_command(args) -> int:
    from pathlib import Path

    from localllm.cli import settings_from_args
    from localllm.errors import UserError
    from localllm.server.config import DurationError, ServerConfig, parse_duration
    from localllm.server.runner import serve

    settings = settings_from_args(args, parallel=args.parallel)
    try:
        keep_alive_s = parse_duration(args.keep_alive)
    except DurationError as e:
        raise UserError(f"--keep-alive: {e}") from None
    template = None
    if args.chat_template:
        from localllm.tokenizer.chat import load_template_file

        template = load_template_file(args.chat_template)  # also checks that it compiles
    config = ServerConfig(
        host=args.host, port=args.port, preload=args.model, keep_alive_s=keep_alive_s,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, max_loaded=args.max_loaded,
        max_queue=args.max_queue, max_body_bytes=args.max_body_bytes, cors_origins=tuple(args.cors_origin),
        chat_template=template, allow_model_paths=args.allow_model_paths,
        allowed_hosts=tuple(args.allowed_host), force_load=bool(args.force),
    ).validate()
    if config.preload:
        from localllm.registry import resolve_model_path

        path = resolve_model_path(config.preload, settings)  # a typo fails now, with exit 2
        if not Path(path).exists():
            raise UserError(f"--model {config.preload}: no such model file {path}")
        from localllm.registry.lookup import resolve_loadable_model

        resolve_loadable_model(config.preload, settings)  # so does a file that is not a loadable model
    serve(config, settings, log_level="info" if settings.verbose else "warning")
    return 0
