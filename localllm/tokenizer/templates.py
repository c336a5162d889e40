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
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
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
        self._template: jinja2.Template | None = None
        self.error: ChatTemplateError | None = None
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            self.error = ChatTemplateError(
                f"the chat template of {self._whose()} is broken (line {e.lineno}: {_one_line(e.message or e)}): "
                f"{OVERRIDE_HINT}"
            )

    def _whose(self) -> str:
        return self.model_name or "this model"

    def _strftime_now(self, fmt: str) -> str:
        return self._clock().strftime(fmt)

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               bos_token: str = "", eos_token: str = "", tools: Sequence[Mapping] | None = None,
               **extra: Any) -> str:
        """The prompt text for `messages` (dicts with at least "role" and "content")."""
        if self._template is None:
            raise self.error  # type: ignore[misc]
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                tools=list(tools) if tools is not None else None,
                strftime_now=self._strftime_now,
                **extra,
            )
        except _Raised as e:
            raise ChatTemplateRefused(
                f"the chat template of {self._whose()} refused this conversation ({_one_line(e)}): "
                f"change the messages, or {OVERRIDE_HINT}"
            ) from None
        except Exception as e:  # TemplateError, SecurityError, TypeError from the template's own code
            raise ChatTemplateError(
                f"the chat template of {self._whose()} failed ({type(e).__name__}: {_one_line(e)}): {OVERRIDE_HINT}"
            ) from None


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
