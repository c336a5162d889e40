"""`localllm run MODEL [PROMPT]`: stream a completion, or a line REPL on a terminal."""

from __future__ import annotations

import json
import sys

from localllm.cli import add_runtime_flags, settings_from_args
from localllm.errors import UserError
from localllm.types import GenerationStats, Message, OutputConstraint, SamplingParams


def add_sampling_flags(p) -> None:
    # Defaults are None so that a created model's PARAMETERs apply where no flag is given;
    # SAMPLING_DEFAULTS fills in the rest.
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, metavar="N", help="stop after N new tokens (default: -1, until EOS or the context is full)")
    g.add_argument("--temperature", type=float, metavar="T", help="0 for greedy (default: 0.8)")
    g.add_argument("--top-k", type=int, metavar="K", help="keep the K most likely tokens, 0 for all (default: 40)")
    g.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling threshold (default: 0.95)")
    g.add_argument("--min-p", type=float, metavar="P", help="drop tokens below P times the top one (default: 0.05)")
    g.add_argument("--repeat-penalty", type=float, metavar="X", help="penalise recent tokens (default: 1.0, off)")
    g.add_argument("--presence-penalty", type=float, metavar="X")
    g.add_argument("--frequency-penalty", type=float, metavar="X")
    g.add_argument("--seed", type=int, metavar="N", help="random seed: the same seed gives the same text")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop before TEXT (repeatable)")


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                  "frequency_penalty", "seed")


def configure(sub) -> None:
    run = sub.add_parser("run", help="generate text from a model", description="Generate text from a model, streaming to stdout.")
    run.add_argument("model", metavar="MODEL", help="a model name or a GGUF file path")
    run.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt (default: read stdin, or a REPL on a terminal)")
    run.add_argument("--stats", choices=("json",), help="print one JSON object of timings as the last line of stderr")
    chat = run.add_argument_group("conversation")
    chat.add_argument("--system", metavar="TEXT", help="system prompt (chat models)")
    chat.add_argument("--raw", action="store_true", help="no chat template: the model continues the prompt as written, special tokens such as <|im_start|> included")
    chat.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the model's own")
    chat.add_argument("--overflow", choices=("refuse", "drop-oldest"), help="when a chat outgrows the context: refuse (default) or drop the oldest turns")
    chat.add_argument("--no-cache", dest="prefix_cache", action="store_false", default=None, help="do not reuse or snapshot the KV cache")
    chat.add_argument("--json-schema", metavar="FILE", help="the reply is JSON valid against the schema in FILE (constrained decoding)")
    add_sampling_flags(run)
    add_runtime_flags(run)
    run.set_defaults(handler=run_command)


def check_max_tokens(n: int | None) -> None:
    """-1 is no limit, as in llama.cpp; 0 would be an empty reply nobody asks for."""
    if n is not None and (n == 0 or n < -1):
        raise UserError(f"--max-tokens must be a positive number of tokens, or -1 for no limit (got {n})")


def check_utf8(text: str | None, what: str) -> None:
    """Bytes that are not UTF-8 (in an argument or on stdin) reach Python as lone
    surrogates, which no tokenizer can encode: one line saying so instead of a crash."""
    if text is not None and any("\ud800" <= ch <= "\udfff" for ch in text):
        raise UserError(f"{what} is not valid UTF-8 text: give it as UTF-8 (check the terminal's or file's encoding)")


def sampling_from_args(args, defaults=None) -> SamplingParams:
    """The flags given, over a created model's parameters (`defaults`), over the defaults."""
    given = {name for name in SAMPLING_FLAGS if getattr(args, name) is not None}
    values = {name: getattr(args, name) for name in given}
    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        if values.get(name, 0) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative (got {values[name]})")
    if values.get("top_p", 0) > 1 or values.get("min_p", 0) > 1:
        raise UserError("--top-p and --min-p must be between 0 and 1")
    if values.get("top_k", 0) < 0:
        raise UserError(f"--top-k must be 0 (all) or positive (got {values['top_k']})")
    asked = SamplingParams(**values)
    return defaults.sampling(asked, given) if defaults is not None else asked


def reply_limits(args, defaults) -> tuple[int, list[str]]:
    """(--max-tokens, --stop), else the model's num_predict and stop, else no limit."""
    max_tokens = args.max_tokens if args.max_tokens is not None else (defaults.num_predict or -1)
    return max_tokens, list(args.stop) if args.stop else list(defaults.stop)


def read_json_schema(path: str) -> OutputConstraint:
    """`--json-schema FILE` as a constraint: the file must hold a JSON object."""
    from pathlib import Path

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--json-schema {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise UserError(f"--json-schema {path}: not valid JSON ({e})") from None
    if not isinstance(schema, dict):
        raise UserError(f"--json-schema {path}: a JSON schema is an object, not {type(schema).__name__}")
    return OutputConstraint("json_schema", json.dumps(schema))


def run_command(args) -> int:
    from localllm.runtime import load_model

    settings = settings_from_args(args, overflow=args.overflow, prefix_cache=args.prefix_cache, parallel=1)
    sampling_from_args(args)  # bad flags fail before the model loads
    template = None
    if args.chat_template:
        from localllm.tokenizer.chat import load_template_file

        template = load_template_file(args.chat_template)
    check_max_tokens(args.max_tokens)
    constraint = read_json_schema(args.json_schema) if args.json_schema else None
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise UserError("the prompt is empty: stdin gave no text; pipe some in, give it as an argument, "
                            "or run `localllm run MODEL` on a terminal for a conversation")
    elif prompt is not None and not prompt.strip():
        raise UserError("the prompt is empty: give some text for the model to answer or continue")
    for what, text in (("the prompt", prompt), ("--system", args.system)):
        check_utf8(text, what)
    model = load_model(args.model, settings, chat_template=template, force=bool(args.force))
    try:
        if constraint is not None:
            try:
                model.check_constraint(constraint)
            except UserError as e:
                raise UserError(f"--json-schema {args.json_schema}: {e}") from None
        args.constraint = constraint
        defaults = model.defaults
        sampling = sampling_from_args(args, defaults)
        args.max_tokens, args.stop = reply_limits(args, defaults)
        args.system = args.system if args.system is not None else defaults.system
        if settings.verbose:
            mem = model.memory()
            print(
                f"loaded {model.path} on {model.backend_name} in {model.load_s:.2f} s "
                f"(weights {mem.weights_bytes / 2**20:.1f} MiB, KV cache {mem.kv_cache_bytes / 2**20:.1f} MiB, "
                f"context {model.n_ctx}, {settings.resolved_threads} threads)",
                file=sys.stderr,
            )
        chat = model.prompter.has_template and not args.raw
        if prompt is None:
            return _repl(model, args, sampling, chat)
        if chat:
            handle = model.chat(_opening(args, model) + [Message("user", prompt)], sampling, args.max_tokens, args.stop,
                                constraint=constraint)
        else:
            text = f"{args.system}\n\n{prompt}" if args.system else prompt
            handle = model.complete(text, sampling, args.max_tokens, args.stop, special=args.raw,
                                    constraint=constraint)
        _report(_stream(handle), args, model)
    finally:
        model.close()
    return 0


def _opening(args, model=None) -> list[Message]:
    """The system prompt (--system, else the model's), then a created model's MESSAGEs."""
    system = [Message("system", args.system)] if args.system else []
    return system + (list(model.defaults.messages) if model is not None else [])


def _stream(handle, keep: list[str] | None = None) -> GenerationStats | None:
    """Print a generation as it comes (collecting its text in `keep`).
    Ctrl-C cancels it and re-raises."""
    out = sys.stdout
    try:
        for chunk in handle:
            if chunk.text:
                out.write(chunk.text)
                out.flush()
                if keep is not None:
                    keep.append(chunk.text)
    except KeyboardInterrupt:
        handle.cancel()
        for _ in handle:  # let the engine thread finish the step it is on
            pass
        out.write("\n")
        out.flush()
        raise
    out.write("\n")
    out.flush()
    return handle.stats


def _repl(model, args, sampling, chat: bool) -> int:
    """A multi-turn conversation on the terminal. Each turn goes through the chat
    template (or, for base models and --raw, continues the running text), and the KV
    cache keeps the history, so a turn costs only its new tokens."""
    print("Type a message and press Enter; Ctrl-C stops a reply; /clear starts over; Ctrl-D or /bye quits.", file=sys.stderr)
    messages = _opening(args, model)
    transcript = f"{args.system}\n\n" if args.system else ""
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /bye to quit)", file=sys.stderr)
            continue
        command = line.strip()
        if command in ("/bye", "/exit", "/quit"):
            return 0
        if command == "/clear":
            messages, transcript = _opening(args, model), (f"{args.system}\n\n" if args.system else "")
            print("(new conversation)", file=sys.stderr)
            continue
        if not command:
            continue
        reply: list[str] = []
        try:
            check_utf8(line, "that line")
            if chat:
                handle = model.chat(messages + [Message("user", line)], sampling, args.max_tokens, args.stop,
                                    constraint=args.constraint)
            else:
                handle = model.complete(transcript + line, sampling, args.max_tokens, args.stop, special=args.raw,
                                        constraint=args.constraint)
            if handle.request.dropped_messages:
                print(f"(the conversation outgrew the context: {handle.request.dropped_messages} oldest messages "
                      "left out)", file=sys.stderr)
            stats = _stream(handle, reply)
        except KeyboardInterrupt:
            stats = None  # a stopped reply is kept, as written so far
        except UserError as e:
            print(f"localllm: error: {e}", file=sys.stderr)
            continue
        reply_text = "".join(reply)
        if chat:
            messages += [Message("user", line), Message("assistant", reply_text)]
        else:
            transcript += line + reply_text + "\n"
        _report(stats, args, model)


def draft_summary(stats: GenerationStats) -> str:
    """One line on speculative decoding for --verbose."""
    if not stats.draft_tokens:
        return "speculative decoding: no drafts verified"
    return (f"speculative decoding: {stats.accepted_tokens} of {stats.draft_tokens} drafted tokens accepted "
            f"({stats.acceptance_rate:.0%}), {stats.accepted_tokens} of {stats.generated_tokens} tokens from drafts")


def _report(stats: GenerationStats | None, args, model=None) -> None:
    if stats is None:
        return
    if args.stats == "json":
        print(json.dumps(stats.as_dict()), file=sys.stderr)
    elif args.verbose:
        print(
            f"prompt {stats.prompt_tokens} tokens ({stats.cached_tokens} cached), "
            f"time to first token {stats.ttft_s * 1000:.1f} ms, "
            f"prefill {stats.prefill_tokens_per_s:.1f} tokens/s, "
            f"decode {stats.generated_tokens} tokens at {stats.decode_tokens_per_s:.1f} tokens/s, "
            f"peak RSS {stats.peak_rss_bytes / 2**20:.0f} MiB",
            file=sys.stderr,
        )
        print(draft_summary(stats), file=sys.stderr)
        if model is not None:
            cache = model.cache_stats
            print(
                f"KV cache: {cache.hits} of {cache.requests} requests reused a prefix "
                f"({cache.token_hit_rate:.0%} of prompt tokens), {cache.bytes_held / 2**20:.1f} MiB held",
                file=sys.stderr,
            )
            if cache.refused_tokens:
                print(
                    f"KV cache: {cache.refused_tokens} cached prompt tokens were prefilled again: the model's "
                    "sliding-window or recurrent cache no longer held them exactly",
                    file=sys.stderr,
                )
