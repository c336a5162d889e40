"""`localllm chat [MODEL]`: the terminal chat app (Textual), imported only when run."""

from __future__ import annotations

import sys

from localllm.cli import add_runtime_flags


def configure(sub) -> None:
    chat = sub.add_parser(
        "chat", help="chat with a model in a terminal app",
        description="Chat with a model in a terminal app: conversations are kept, models are a key away "
        "(Ctrl+O), F1 lists every key.",
    )
    chat.add_argument("model", metavar="MODEL", nargs="?", help="a model name or a GGUF file path: a new conversation "
                      "with it (default: the last conversation, on its model)")
    chat.add_argument("--resume", action="store_true", help="reopen the last conversation (with MODEL: continue it on MODEL)")
    chat.add_argument("--light", action="store_true", help="start in the light theme (Ctrl+T toggles)")
    chat.add_argument("--overflow", choices=("refuse", "drop-oldest"),
                      help="what a chat too long for the context does, unless the chat's settings say (default: refuse)")
    add_runtime_flags(chat)
    chat.set_defaults(handler=chat_command)


def chat_command(args) -> int:
    from localllm.cli import settings_from_args
    from localllm.errors import UserError

    # --verbose is not passed on: llama.cpp's log on stderr would garble the screen.
    settings = settings_from_args(args, verbose=None, overflow=args.overflow, parallel=1)
    if args.model:  # a bad file is one line and exit 2 here, not an error inside the app
        from localllm.registry.lookup import resolve_loadable_model

        resolve_loadable_model(args.model, settings)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError("localllm chat needs a terminal: for scripts use `localllm run MODEL PROMPT`")
    from localllm.tui.app import ChatApp
    from localllm.tui.workers import default_loader

    force = bool(args.force)

    def loader(name, loader_settings):
        return default_loader(name, loader_settings, force=force)

    app = ChatApp(settings, args.model, loader=loader, theme="textual-light" if args.light else None,
                  resume=args.resume)
    app.run()
    return app.return_code or 0
