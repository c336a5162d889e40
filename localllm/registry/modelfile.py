"""Modelfiles and the defaults a created model carries.

`localllm create NAME -f Modelfile` (and the server's `/api/create`) read Ollama's
Modelfile instructions that apply here: FROM (a pulled name, a GGUF file, or a folder
holding one), PARAMETER, TEMPLATE, SYSTEM, MESSAGE and LICENSE. ADAPTER is refused: there
is no LoRA loading. A TEMPLATE is a Jinja chat template (what a GGUF's
`tokenizer.chat_template` holds, and what `--chat-template` takes); Ollama's Go
templates are refused with that explanation.

`ModelDefaults` is what a created model keeps in its manifest and hands to whoever runs
it: sampling parameters, stop strings, a reply limit, a context size, a system prompt,
a template and opening messages. A request's own values always win over them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace

from localllm.errors import UserError
from localllm.types import Message, SamplingParams

# Ollama's PARAMETER names that mean something here, with their types. (`stop` repeats.)
PARAMETER_TYPES: dict[str, type] = {
    "temperature": float, "top_k": int, "top_p": float, "min_p": float, "repeat_penalty": float,
    "repeat_last_n": int, "presence_penalty": float, "frequency_penalty": float, "seed": int,
    "num_predict": int, "num_ctx": int, "stop": str,
}
_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                    "presence_penalty", "frequency_penalty", "seed")
_ROLES = ("system", "user", "assistant")
_INSTRUCTIONS = ("FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "MESSAGE", "LICENSE", "ADAPTER")
_GO_TEMPLATE = re.compile(r"\{\{-?\s*(?:\.\w|if\s+\.|range\s+\.|end\b|else\b)")


class ModelfileError(UserError):
    """A Modelfile (or an /api/create body) that cannot be used, with the line at fault."""


def parameter_value(name: str, value, where: str = "PARAMETER"):
    """`value` (text from a Modelfile, or JSON) as the type `name` takes; raises with the fix."""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"{where} {name}: not a parameter localllm uses; the ones it does are "
                             f"{', '.join(sorted(PARAMETER_TYPES))}")
    if kind is str:
        if not isinstance(value, str) or not value:
            raise ModelfileError(f"{where} {name}: give the text to stop at")
        return value
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value) if not (kind is int and isinstance(value, float) and not value.is_integer()) else None
        if number is None:
            raise ValueError
    except (TypeError, ValueError):
        raise ModelfileError(f"{where} {name} {value!r}: must be {'an integer' if kind is int else 'a number'}") from None
    _check_range(name, number, where)
    return number


def _check_range(name: str, value, where: str) -> None:
    bad = None
    if name in ("temperature", "repeat_penalty", "top_k") and value < 0:
        bad = "must not be negative"
    elif name in ("top_p", "min_p") and not 0 <= value <= 1:
        bad = "must be between 0 and 1"
    elif name == "num_ctx" and value < 16:
        bad = "must be at least 16 tokens"
    elif name == "num_predict" and (value == 0 or value < -1):
        bad = "must be a positive number of tokens, or -1 for no limit"
    elif name == "repeat_last_n" and value < -1:
        bad = "must be -1 (the whole context), 0 (off) or a positive window"
    if bad:
        raise ModelfileError(f"{where} {name} {value}: {bad}")


@dataclass(frozen=True)
class ModelDefaults:
    """A created model's own settings; empty for a pulled or imported model."""

    parameters: dict = field(default_factory=dict)  # name -> value; "stop" -> list of strings
    system: str | None = None
    template: str | None = None
    messages: tuple[Message, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.parameters or self.system or self.template or self.messages)

    @property
    def stop(self) -> tuple[str, ...]:
        return tuple(self.parameters.get("stop", ()))

    @property
    def num_predict(self) -> int | None:
        n = self.parameters.get("num_predict")
        return None if n is None or n < 0 else n

    @property
    def num_ctx(self) -> int | None:
        return self.parameters.get("num_ctx")

    def sampling(self, asked: SamplingParams, given: frozenset[str] | set[str]) -> SamplingParams:
        """`asked` with this model's values wherever the request did not give its own
        (`given` names the fields it did)."""
        changes = {}
        for name in _SAMPLING_FIELDS:
            if name in self.parameters and name not in given:
                value = self.parameters[name]
                if name == "repeat_last_n":
                    value = 0 if value == -1 else value  # ours: 0 is the whole history
                    if self.parameters[name] == 0:  # Ollama: a window of 0 turns penalties off
                        changes.update(repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
                if name == "seed" and value < 0:
                    value = None
                changes[name] = value
        return replace(asked, **changes) if changes else asked

    def conversation(self, messages: list[Message] | tuple[Message, ...]) -> list[Message]:
        """The messages a chat sends: this model's system prompt unless the chat has its
        own, then its opening MESSAGEs, then the chat."""
        messages = list(messages)
        if messages and messages[0].role == "system":
            head, rest = messages[:1], messages[1:]
        else:
            head, rest = ([Message("system", self.system)] if self.system else []), messages
        return head + list(self.messages) + rest

    def merged_over(self, base: "ModelDefaults") -> "ModelDefaults":
        """These settings on top of a FROM model's: parameters key by key (a new `stop`
        list replaces the old one), the rest where given."""
        return ModelDefaults(
            parameters={**base.parameters, **self.parameters},
            system=self.system if self.system is not None else base.system,
            template=self.template if self.template is not None else base.template,
            messages=self.messages or base.messages,
        )

    def to_json(self) -> dict:
        out: dict = {}
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        if self.system is not None:
            out["system"] = self.system
        if self.template is not None:
            out["template"] = self.template
        if self.messages:
            out["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> "ModelDefaults":
        if not data:
            return cls()
        return cls(
            parameters=dict(data.get("parameters") or {}),
            system=data.get("system"),
            template=data.get("template"),
            messages=tuple(Message(m["role"], m["content"]) for m in data.get("messages") or ()),
        )


@dataclass(frozen=True)
class Modelfile:
    source: str  # FROM: a name, or a path (relative to the Modelfile's folder)
    defaults: ModelDefaults
    license: str | None = None


def _logical_lines(text: str):
    """(line number, instruction, argument text), joining triple-quoted values."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        number, raw = i + 1, lines[i].strip()
        i += 1
        if not raw or raw.startswith("#"):
            continue
        head, _, rest = raw.partition(" ")
        rest = rest.strip()
        if '"""' in rest:
            start = rest.index('"""')
            body = rest[start + 3:]
            while '"""' not in body:
                if i >= len(lines):
                    raise ModelfileError(f"Modelfile line {number}: a \"\"\" value is never closed")
                body += "\n" + lines[i]
                i += 1
            end = body.index('"""')
            if body[end + 3:].strip():
                raise ModelfileError(f"Modelfile line {number}: text after the closing \"\"\"")
            rest = rest[:start] + '"""' + body[:end]
        yield number, head.upper(), rest


def _unquote(value: str) -> str:
    if value.startswith('"""'):
        return value[3:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return shlex.split(value)[0]
        except ValueError:
            return value[1:-1]
    return value


def parse_modelfile(text: str) -> Modelfile:
    """A Modelfile's text, checked; raises ModelfileError naming the line and the fix."""
    source = None
    parameters: dict = {}
    system = template = license_ = None
    messages: list[Message] = []
    for number, instruction, rest in _logical_lines(text):
        where = f"Modelfile line {number}"
        if instruction not in _INSTRUCTIONS:
            raise ModelfileError(f"{where}: unknown instruction {instruction!r}: use {', '.join(_INSTRUCTIONS[:-1])}")
        if instruction == "ADAPTER":
            raise ModelfileError(f"{where}: ADAPTER is not supported: localllm does not load LoRA adapters; "
                                 "merge the adapter into the weights and FROM the merged GGUF")
        if not rest:
            raise ModelfileError(f"{where}: {instruction} needs a value")
        if instruction == "FROM":
            source = _unquote(rest)
        elif instruction == "PARAMETER":
            name, _, value = rest.partition(" ")
            name, value = name.lower(), _unquote(value.strip())
            checked = parameter_value(name, value, f"{where}: PARAMETER")
            if name == "stop":
                parameters.setdefault("stop", []).append(checked)
            else:
                parameters[name] = checked
        elif instruction == "MESSAGE":
            role, _, content = rest.partition(" ")
            if role.lower() not in _ROLES:
                raise ModelfileError(f"{where}: MESSAGE role {role!r}: use system, user or assistant")
            messages.append(Message(role.lower(), _unquote(content.strip())))
        elif instruction == "SYSTEM":
            system = _unquote(rest)
        elif instruction == "TEMPLATE":
            template = check_template(_unquote(rest), where)
        elif instruction == "LICENSE":
            license_ = _unquote(rest) if license_ is None else f"{license_}\n{_unquote(rest)}"
    if source is None:
        raise ModelfileError("the Modelfile has no FROM line: say which model it builds on "
                             "(`FROM llama3.2:1b` or `FROM ./model.gguf`)")
    return Modelfile(source, ModelDefaults(parameters, system, template, tuple(messages)), license_)


def check_template(template: str, where: str = "TEMPLATE") -> str:
    """A Jinja chat template that compiles; Ollama's Go templates get a clear refusal."""
    import jinja2

    from localllm.tokenizer.templates import ChatTemplate

    if _GO_TEMPLATE.search(template):
        raise ModelfileError(f"{where}: this TEMPLATE is in Ollama's Go template syntax; localllm's chat templates "
                             "are Jinja (what a GGUF's tokenizer.chat_template holds): translate it, or leave "
                             "TEMPLATE out to use the model's own")
    compiled = ChatTemplate(template)
    if compiled.error is not None:
        try:
            jinja2.Environment().parse(template)
        except jinja2.TemplateSyntaxError as e:
            raise ModelfileError(f"{where}: not a valid Jinja template (line {e.lineno}: {e.message})") from None
        raise ModelfileError(f"{where}: {compiled.error}")
    return template


def render_modelfile(source: str, defaults: ModelDefaults, license_: str | None = None) -> str:
    """Modelfile text that `create` reads back into the same model (`show --modelfile`)."""
    out = ["# Modelfile generated by `localllm show --modelfile`", f"FROM {source}"]
    if defaults.template is not None:
        out.append(f'TEMPLATE """{defaults.template}"""')
    if defaults.system is not None:
        out.append(f'SYSTEM """{defaults.system}"""')
    for name, value in defaults.parameters.items():
        for item in (value if isinstance(value, list) else [value]):
            out.append(f"PARAMETER {name} {_quote(item) if isinstance(item, str) else item}")
    for m in defaults.messages:
        out.append(f'MESSAGE {m.role} """{m.content}"""' if "\n" in m.content or '"' in m.content
                   else f'MESSAGE {m.role} "{m.content}"')
    if license_:
        out.append(f'LICENSE """{license_}"""')
    return "\n".join(out) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
