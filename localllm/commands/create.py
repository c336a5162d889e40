"""`localllm create NAME -f Modelfile` and `localllm cp SRC DST`: new names in the store
over blobs it already holds (see `localllm.registry.create`)."""

from __future__ import annotations

import sys
from pathlib import Path


def configure(sub) -> None:
    create = sub.add_parser("create", help="make a model from a Modelfile", description=(
        "Make a model from a Modelfile, as Ollama does: FROM a pulled name, a GGUF file or a folder holding "
        "one; PARAMETER (temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, presence_penalty, "
        "frequency_penalty, seed, stop, num_predict, num_ctx), TEMPLATE (a Jinja chat template), SYSTEM, "
        "MESSAGE and LICENSE. run, chat and the server apply them; flags and request fields override them."))
    create.add_argument("model", metavar="NAME", help="the name to give it (tag: latest when omitted)")
    create.add_argument("-f", "--file", metavar="MODELFILE", default="Modelfile",
                        help="the Modelfile (default: ./Modelfile)")
    create.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")
    create.set_defaults(handler=create_command)

    cp = sub.add_parser("cp", help="copy a model to another name", description=(
        "Give a pulled, imported or created model another name (no file is copied: both names share the blobs)."))
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DST")
    cp.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")
    cp.set_defaults(handler=copy_command)


def create_command(args) -> int:
    from localllm.config import load_settings
    from localllm.errors import UserError
    from localllm.registry import create_model
    from localllm.registry.modelfile import parse_modelfile

    path = Path(args.file).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"no Modelfile at {path}: write one (`FROM model-or-file.gguf`, then PARAMETER, SYSTEM, "
                        "...) or point at it with -f") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the Modelfile {path}: {getattr(e, 'strerror', None) or e}") from None
    written = create_model(args.model, parse_modelfile(text), load_settings(), base_dir=path.resolve().parent)
    print(f"created {written.entry.name}: `localllm run {written.entry.name}`")
    _say_replaced(written)
    return 0


def copy_command(args) -> int:
    from localllm.config import load_settings
    from localllm.registry import copy_model

    written = copy_model(args.source, args.destination, load_settings())
    print(f"copied {args.source} to {written.entry.name}")
    _say_replaced(written)
    return 0


def _say_replaced(written) -> None:
    if written.replaced:
        print(f"{written.entry.name} named another model before; that name now means this one", file=sys.stderr)
