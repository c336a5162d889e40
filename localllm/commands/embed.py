"""`localllm embed MODEL TEXT...`: sentence embeddings as JSON on stdout.

One JSON object: the model, the pooling its metadata declares, the vector length, the
tokens embedded and one vector per text (L2-normalised unless --no-normalize). Without
TEXT arguments each non-empty line of standard input is one text. A model without a
pooling type (a chat model) gives no embeddings: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys

from localllm.cli import add_runtime_flags
from localllm.errors import UserError


def configure(sub) -> None:
    p = sub.add_parser("embed", help="print sentence embeddings as JSON",
                       description="Embed texts with an embedding model (one whose GGUF metadata sets a pooling "
                                   "type: mean, CLS or last token) and print one JSON object.")
    p.add_argument("model", metavar="MODEL", help="a model name or a GGUF file path")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to embed (default: one per line of stdin)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="print the pooled vectors as they are, not scaled to unit length")
    p.add_argument("--no-truncate", dest="truncate", action="store_false",
                   help="refuse a text longer than the context instead of cutting it")
    add_runtime_flags(p)
    p.set_defaults(handler=embed_command)


def embed_command(args) -> int:
    from localllm.cli import settings_from_args
    from localllm.runtime import load_model

    texts = list(args.texts)
    if not texts and not sys.stdin.isatty():
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise UserError("nothing to embed: give TEXT arguments or lines on standard input")
    settings = settings_from_args(args, parallel=1)
    model = load_model(args.model, settings, force=bool(args.force))
    try:
        runner = model.embeddings()
        result = runner.embed(texts, truncate=args.truncate, normalize=args.normalize)
    finally:
        model.close()
    if result.truncated:
        print(f"localllm: {result.truncated} of {len(texts)} texts were cut to the context of "
              f"{runner.embedder.max_tokens} tokens", file=sys.stderr)
    json.dump({"model": args.model, "pooling": runner.embedder.pooling, "dimensions": runner.dimensions,
               "prompt_tokens": result.prompt_tokens, "embeddings": result.vectors.tolist()}, sys.stdout)
    sys.stdout.write("\n")
    return 0
