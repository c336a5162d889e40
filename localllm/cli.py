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


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--backend", choices=("auto", "llamacpp", "mlx"), help="compute backend (default: auto)")
    g.add_argument("--ctx-size", type=int, metavar="N", help="context window in tokens (default: 4096, at most the model's)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: physical cores)")
    g.add_argument("--kv-type", choices=("f16", "q8_0"), help="KV cache precision (default: f16)")
    g.add_argument("--verbose", action="store_true", default=None, help="print load and speed figures (and llama.cpp's log) to stderr")
    g.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=-1, metavar="N", help="stop after N new tokens (default: -1, until EOS or the context is full)")
    g.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 for greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, default=40, metavar="K", help="keep the K most likely tokens, 0 for all (default: 40)")
    g.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling threshold (default: 0.95)")
    g.add_argument("--min-p", type=float, default=0.05, metavar="P", help="drop tokens below P times the top one (default: 0.05)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, metavar="X", help="penalise recent tokens (default: 1.0, off)")
    g.add_argument("--presence-penalty", type=float, default=0.0, metavar="X")
    g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X")
    g.add_argument("--seed", type=int, metavar="N", help="random seed: the same seed gives the same text")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop before TEXT (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localllm",
        description="Run open LLMs locally: chat in the terminal, pull models, serve a local API.",
    )
    parser.add_argument("--version", action="version", version=f"localllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="generate text from a model", description="Generate text from a model, streaming to stdout.")
    run.add_argument("model", metavar="MODEL", help="a GGUF file path")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt (default: read stdin, or a REPL on a terminal)")
    run.add_argument("--stats", choices=("json",), help="print one JSON object of timings as the last line of stderr")
    _add_sampling_flags(run)
    _add_runtime_flags(run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False))
    try:
        if args.command == "run":
            from localllm.commands.run import run_command

            return run_command(args)
        parser.error(f"unknown command {args.command}")
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
