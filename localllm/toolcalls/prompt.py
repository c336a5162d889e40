"""Tools into the prompt, and the constraint for a forced call.

`ToolPlan.for_model(...)` decides, once per request, everything that depends on the model:
its family's format, whether its chat template renders `tools` itself (then they go in as
the template's `tools` variable, as transformers passes them) or not (then the plain-JSON
fallback: a system-prompt section lists the tools and asks for a JSON call, assistant
calls in the history become their JSON text and tool results become user turns), the
marker tokens the reply must keep, and for tool_choice "required" or a named function the
grammar that makes the model write one valid call.

Tool definitions and call arguments are rendered as template markup (the template writes
them, not message contents), so text in them that spells a control token ("<|im_end|>")
would become that token: such requests are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from localllm.errors import UserError
from localllm.tokenizer.protocol import Tokenizer
from localllm.toolcalls.formats import (
    PLAIN_JSON, ToolCallFormat, call_grammar, detect_format, marker_token_ids, template_takes_tools,
)
from localllm.types import Message, OutputConstraint

FALLBACK_INSTRUCTIONS = (
    "You can call these functions:\n{tools}\n\n"
    "To call a function, reply with only a JSON object: "
    '{{"name": <function name>, "arguments": <arguments object>}}. '
    "Otherwise answer normally."
)


@dataclass(frozen=True)
class ToolPlan:
    format: ToolCallFormat
    messages: tuple[Message, ...]
    template_tools: tuple[dict, ...] | None  # the template's `tools` variable, or None
    special_text_ids: frozenset[int]
    constraint: OutputConstraint | None

    @classmethod
    def for_model(cls, tokenizer: Tokenizer, template: str | None, messages: Sequence[Message],
                  tools: Sequence[Mapping], choice: str | None) -> "ToolPlan":
        """`tools`: OpenAI tool objects ({"type": "function", "function": {...}});
        `choice`: "auto", "none", "required", or a function's name."""
        fmt = detect_format(template, tokenizer)
        functions = [t["function"] for t in tools]
        if choice not in (None, "auto", "none", "required") and choice not in {f["name"] for f in functions}:
            raise UserError(f"tool_choice names function {choice!r}, which is not among the tools")
        if template_takes_tools(template):
            _refuse_control_text(tokenizer, [tools, [m.tool_calls for m in messages]])
            plan_messages, template_tools = tuple(messages), tuple(dict(t) for t in tools) if tools else None
        else:
            fmt = PLAIN_JSON
            plan_messages, template_tools = _fallback_messages(messages, functions), None
        constraint = None
        if tools and choice not in (None, "auto", "none"):
            chosen = functions if choice == "required" else [f for f in functions if f["name"] == choice]
            constraint = OutputConstraint("lark", call_grammar(fmt, chosen, tokenizer))
        return cls(fmt, plan_messages, template_tools, marker_token_ids(fmt, tokenizer), constraint)


def _fallback_messages(messages: Sequence[Message], functions: Sequence[Mapping]) -> tuple[Message, ...]:
    out: list[Message] = []
    for m in messages:
        if m.tool_calls:
            calls = [{"name": c.name, "arguments": _loads(c.arguments)} for c in m.tool_calls]
            text = json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)
            out.append(Message("assistant", (m.content + "\n" if m.content else "") + text))
        elif m.role == "tool":
            who = f" of {m.name}" if m.name else ""
            out.append(Message("user", f"Result{who}: {m.content}"))
        else:
            out.append(replace(m, tool_calls=(), tool_call_id=None, name=None))
    if functions:
        listing = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
        section = FALLBACK_INSTRUCTIONS.format(tools=listing)
        if out and out[0].role == "system":
            out[0] = Message("system", f"{out[0].content}\n\n{section}" if out[0].content else section)
        else:
            out.insert(0, Message("system", section))
    return tuple(out)


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _refuse_control_text(tokenizer: Tokenizer, value) -> None:
    specials = [t for t in tokenizer.special_tokens if t]
    text = json.dumps(value, ensure_ascii=False, default=lambda o: o.__dict__)
    for special in specials:
        if special in text:
            raise UserError(f"the tools or tool calls contain {special!r}, a control token of this model: "
                            "remove it from names, descriptions and arguments")
