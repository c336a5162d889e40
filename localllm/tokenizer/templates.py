"""Jinja chat templates, rendered the way Hugging Face transformers renders them.

A model's template (GGUF `tokenizer.chat_template`, or `chat_template` in a folder's
`tokenizer_config.json`) is compiled in jinja2's `ImmutableSandboxedEnvironment` with
`trim_blocks` and `lstrip_blocks` on and the `loopcontrols` extension, and rendered with
the variables real templates read: `messages`, `add_generation_prompt`, `bos_token`,
`eos_token`, `tools`, `raise_exception(msg)`, `strftime_now(fmt)`, plus transformers'
`tojson` filter (no HTML escaping, keys kept in order) and its `{% generation %}` tag.

Every failure is a `ChatTemplateError` (a `UserError`) naming the model and pointing to
`--chat-template FILE`: a syntax error when the template is compiled, a
`raise_exception(...)` or any other error while it renders.
"""

from __future__ import annotations

import datetime
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from localllm.errors import UserError

OVERRIDE_HINT = "pass a working template with --chat-template FILE"


class ChatTemplateError(UserError):
    """A chat template that cannot be compiled or rendered."""


class ChatTemplateRefused(ChatTemplateError):
    """The template itself rejected the conversation (it called raise_exception)."""


class _Raised(jinja2.exceptions.TemplateError):
    """What `raise_exception` throws inside a template."""


def _raise_exception(message: str = "") -> None:
    raise _Raised(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' filter: jinja's own escapes <, >, & and ' for HTML, which would change
    # what the model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks the assistant's tokens
    with it (for training masks); rendering just keeps the body."""

    tags = {"generation"}

    def parse(self, parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


# What one arithmetic step of a template may build: templates format chats, so numbers of
# thousands of digits and strings or lists of millions of items are an attack
# (`{{ 10**(10**10) }}` held the GIL, and so the whole server, for ever).
MAX_INT_BITS = 4096
MAX_SEQUENCE_ITEMS = 1 << 22


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with a size limit on what `**`, `*` and `+` may produce."""

    intercepted_binops = frozenset({"**", "*", "+"})

    def call_binop(self, context, operator: str, left, right):
        if operator == "**":
            _check_power(left, right)
            return left ** right
        if operator == "*":
            _check_product(left, right)
            return left * right
        _check_sum(left, right)
        return left + right


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"the template builds {what}, beyond what a chat template may")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_power(base, exponent) -> None:
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > MAX_INT_BITS:
            raise _too_big(f"a number of more than {MAX_INT_BITS} bits")


def _check_product(left, right) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and _is_int(n) and len(seq) * n > MAX_SEQUENCE_ITEMS:
            raise _too_big(f"a sequence of more than {MAX_SEQUENCE_ITEMS} items")
    if _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise _too_big(f"a number of more than {MAX_INT_BITS} bits")


def _check_sum(left, right) -> None:
    if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
        if len(left) + len(right) > MAX_SEQUENCE_ITEMS:
            raise _too_big(f"a sequence of more than {MAX_SEQUENCE_ITEMS} items")


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ChatTemplate:
    """One compiled chat template. A template that does not compile is kept, and its
    error raised on first use, so a model with a broken template still loads for plain
    completions."""

    def __init__(self, source: str, model_name: str = "",
                 clock: Callable[[], datetime.datetime] = datetime.datetime.now):
        self.source = source
        self.model_name = model_name
        self._clock = clock
        self.error: ChatTemplateError | None = None
        try:  # parsed here for a clear error at load time; compiled and run in the sandbox process
            _environment().parse(source)
        except jinja2.TemplateSyntaxError as e:
            self.error = ChatTemplateError(
                f"the chat template of {self._whose()} is broken (line {e.lineno}: {_one_line(e.message or e)}): "
                f"{OVERRIDE_HINT}"
            )
        except (RecursionError, MemoryError):
            self.error = ChatTemplateError(f"the chat template of {self._whose()} nests too deeply to be read: "
                                           f"{OVERRIDE_HINT}")

    def _whose(self) -> str:
        return self.model_name or "this model"

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               bos_token: str = "", eos_token: str = "", tools: Sequence[Mapping] | None = None,
               **extra: Any) -> str:
        """The prompt text for `messages` (dicts with at least "role" and "content").
        Rendered in a separate process under a time, memory and size budget
        (`template_sandbox`), so a hostile template cannot hold this process."""
        from localllm.tokenizer.template_sandbox import SandboxFailure, render_sandboxed

        if self.error is not None:
            raise self.error
        context = dict(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=list(tools) if tools is not None else None,
            **extra,
        )
        try:
            return render_sandboxed(self.source, context, self._clock())
        except SandboxFailure as e:
            if e.kind == "raised":
                raise ChatTemplateRefused(
                    f"the chat template of {self._whose()} refused this conversation ({_one_line(e.detail)}): "
                    f"change the messages, or {OVERRIDE_HINT}"
                ) from None
            raise ChatTemplateError(f"the chat template of {self._whose()} {e.detail}: {OVERRIDE_HINT}") from None


def render_in_process(source: str, context: dict, now: datetime.datetime, max_chars: int) -> str:
    """Render `source` here (the sandbox process calls this). Raises _Raised for
    raise_exception, OverflowError when the output passes `max_chars`, anything else for
    the template's own errors."""
    template = _compiled(source)
    parts, size = [], 0
    for piece in template.generate(strftime_now=now.strftime, **context):
        size += len(piece)
        if size > max_chars:
            raise OverflowError(f"the template wrote more than {max_chars:,} characters")
        parts.append(piece)
    return "".join(parts)


@lru_cache(maxsize=16)
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def load_template_file(path: str | Path) -> str:
    """The text of a `--chat-template FILE`: a Jinja file, or a JSON file with a
    "chat_template" key (tokenizer_config.json, chat_template.json). Checked to compile."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--chat-template {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"--chat-template {path}: not a text file: give a Jinja template") from None
    if path.suffix == ".json":
        try:
            template = template_from_config(json.loads(text))
        except ValueError as e:
            raise UserError(f"--chat-template {path}: not valid JSON ({_one_line(e)})") from None
        if template is None:
            raise UserError(f"--chat-template {path}: has no \"chat_template\" key: give a Jinja template file")
        text = template
    if not text.strip():
        raise UserError(f"--chat-template {path}: the file is empty: give a Jinja chat template")
    try:
        _environment().parse(text)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(
            f"--chat-template {path}: not a valid Jinja template (line {e.lineno}: {_one_line(e.message or e)})"
        ) from None
    except (RecursionError, MemoryError):
        raise UserError(f"--chat-template {path}: nests too deeply to be read as a Jinja template") from None
    return text


def template_from_config(config: Any) -> str | None:
    """The chat template in a tokenizer_config.json or chat_template.json object: a string,
    or a list of named templates (the one named "default" wins)."""
    if not isinstance(config, dict):
        return None
    value = config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default") or next((t for t in named.values() if isinstance(t, str)), None)
        return chosen if isinstance(chosen, str) else None
    return None


def find_chat_template(folder: str | Path) -> str | None:
    """The chat template shipped in a model folder: chat_template.jinja, then
    chat_template.json, then tokenizer_config.json. None when there is none."""
    folder = Path(folder)
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        try:
            template = template_from_config(json.loads((folder / name).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        if template is not None:
            return template
    return None
