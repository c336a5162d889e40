"""Command line: argument parsing, dispatch and the error policy.

Parsing imports nothing heavy, so `--help` and `--version` answer at once; each command
module is imported only when its command runs. A `UserError` becomes one line on stderr
and its exit code (2); anything unexpected is exit 1, with the traceback behind --debug;
Ctrl-C is exit 130.
"""

from __future__ import annotations

import argparse
import sys

from localllm import __version__
from localllm.errors import UserError

EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


# Each module defines `configure(subparsers)`, which adds its commands and sets
# `handler` to a function taking the parsed args. Modules import heavy libraries only
# inside their handlers, so building the parser stays cheap.
COMMAND_MODULES = ("run", "models", "create", "chat", "serve", "service", "embed", "running")


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that loads a model."""
    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=("auto", "llamacpp", "mlx"), help="compute backend (default: auto)")
    g.add_argument("--ctx-size", type=int, metavar="N", help="context window in tokens (default: 4096, at most the model's training context; a larger N is honoured with a warning)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: the physical cores other processes leave free)")
    g.add_argument("--kv-type", choices=("f16", "q8_0"), help="KV cache precision (default: f16)")
    g.add_argument("--gpu-layers", type=int, metavar="N", help="llama.cpp: layers to offload to the GPU (Metal on Apple Silicon): -1 all (default), 0 CPU only; a CPU-only build ignores it")
    g.add_argument("--flash-attn", choices=("auto", "on", "off"),
                   help="llama.cpp flash attention (default: auto, measured once per model file and machine)")
    g.add_argument("--force", action="store_true", default=None, help="load even when the memory check says the model will not fit")
    d = p.add_argument_group("speculative decoding (the same text, sooner)")
    d.add_argument("--draft", choices=("auto", "prompt-lookup", "none"),
                   help="draft tokens from the context and verify them in one pass: auto (default) only where "
                        "measured to pay, prompt-lookup always, none off")
    d.add_argument("--draft-max", type=int, metavar="N", help="most tokens one draft proposes (default: 8)")
    d.add_argument("--draft-ngram", type=int, metavar="N", help="longest context n-gram prompt lookup matches (default: 3)")
    g.add_argument("--verbose", action="store_true", default=None, help="print load and speed figures (and llama.cpp's log) to stderr")
    g.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")


def settings_from_args(args, **more):
    """The settings for a command that took `add_runtime_flags`: its runtime flags (None:
    not given, the config file or environment decides) and `more` (the command's own
    flags, or None to leave one to the config)."""
    from localllm.config import load_settings

    flags = dict(backend=args.backend, ctx_size=args.ctx_size, threads=args.threads, kv_type=args.kv_type,
                 flash_attn=args.flash_attn, gpu_layers=args.gpu_layers, verbose=args.verbose, debug=args.debug,
                 draft=args.draft, draft_max=args.draft_max, draft_ngram=args.draft_ngram)
    return load_settings(**(flags | more))


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="localllm",
        description="Run open LLMs locally: chat in the terminal, pull models, serve a local API.",
    )
    parser.add_argument("--version", action="version", version=f"localllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"localllm.commands.{name}").configure(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        return args.handler(args)
    except UserError as e:
        print(f"localllm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception as e:
        if debug:
            raise
        print(f"localllm: internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0
