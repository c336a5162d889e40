"""Request fields for structured output, tools and logprobs, in OpenAI's and Ollama's
shapes, and the pieces of their replies (tool calls, logprob entries).

- OpenAI `response_format`: {"type": "text"}, {"type": "json_object"}, or
  {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}; Ollama `format`:
  "json" or a schema object. Both become an `OutputConstraint`: the reply always parses
  (and validates), or its finish reason says it was cut (length). `strict` false is
  enforced all the same: a schema is either followed or refused.
- OpenAI `tools` ({"type": "function", "function": {"name", "description", "parameters"}})
  and `tool_choice` ("auto", "none", "required", {"type": "function", "function":
  {"name"}}); Ollama `tools` (the same objects). Assistant `tool_calls` and `tool` results
  in the history, in each API's shape.
"""

from __future__ import annotations

import json
import re

from localllm.server.errors import BadRequest
from localllm.server.fields import Fields
from localllm.types import OutputConstraint, TokenLogprob, ToolCall

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_TOOLS = 128


def _schema_text(value, where: str) -> str:
    if not isinstance(value, dict):
        raise BadRequest(f"'{where}' must be a JSON schema object", param=where)
    return json.dumps(value)


def response_format(f: Fields) -> OutputConstraint | None:
    fmt = f.obj("response_format")
    if fmt is None:
        return None
    kind = fmt.text("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("json_object")
    if kind == "json_schema":
        spec = fmt.obj("json_schema")
        if spec is None:
            raise BadRequest("'response_format.json_schema' is required for type json_schema",
                             param="response_format.json_schema")
        spec.flag("strict", False)
        spec.text("name")
        schema = spec.raw("schema", {"type": "object"})
        return OutputConstraint("json_schema", _schema_text(schema, "response_format.json_schema.schema"))
    raise BadRequest(f"'response_format.type' is {kind!r}: use text, json_object or json_schema",
                     param="response_format.type")


def ollama_format(f: Fields) -> OutputConstraint | None:
    value = f.raw("format")
    if value in (None, ""):
        return None
    if value == "json":
        return OutputConstraint("json_object")
    if isinstance(value, dict):
        return OutputConstraint("json_schema", _schema_text(value, "format"))
    raise BadRequest("'format' must be \"json\" or a JSON schema object", param="format")


def _objects(f: Fields, key: str, limit: int | None = None):
    """(index, fields, name) of each object in the array `key`; a 400 for anything else."""
    for i, item in enumerate(f.array(key, limit=limit) or []):
        where = f"{f.where}{key}[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object", param=where)
        yield i, Fields(item, f"{where}."), where


def tools(f: Fields) -> tuple[dict, ...]:
    out = []
    for _, t, where in _objects(f, "tools", MAX_TOOLS):
        kind = t.text("type", "function")
        if kind != "function":
            raise BadRequest(f"'{where}.type' is {kind!r}: only function tools are supported", param=f"{where}.type")
        fn = t.obj("function")
        if fn is None:
            raise BadRequest(f"'{where}.function' is required", param=f"{where}.function")
        name = fn.text("name", required=True)
        if not _FUNCTION_NAME.fullmatch(name):
            raise BadRequest(f"'{where}.function.name' must be 1-64 letters, digits, '_', '.' or '-'",
                             param=f"{where}.function.name")
        function = {"name": name}
        description = fn.text("description")
        if description is not None:
            function["description"] = description
        parameters = fn.raw("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise BadRequest(f"'{where}.function.parameters' must be a JSON schema object",
                                 param=f"{where}.function.parameters")
            function["parameters"] = parameters
        out.append({"type": "function", "function": function})
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise BadRequest("'tools' names a function twice", param="tools")
    return tuple(out)


def tool_choice(f: Fields, has_tools: bool) -> str | None:
    value = f.raw("tool_choice")
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise BadRequest(f"'tool_choice' is {value!r}: use auto, none, required or a function",
                             param="tool_choice")
        choice = value
    elif isinstance(value, dict):
        fn = Fields(value, "tool_choice.").obj("function")
        if fn is None:
            raise BadRequest("'tool_choice.function' is required", param="tool_choice.function")
        choice = fn.text("name", required=True)
    else:
        raise BadRequest("'tool_choice' must be a string or an object", param="tool_choice")
    if choice != "none" and choice != "auto" and not has_tools:
        raise BadRequest("'tool_choice' asks for a tool call but 'tools' is empty", param="tool_choice")
    return choice


def history_tool_calls(m: Fields) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls`, in OpenAI's shape (arguments as JSON text, an
    id) or Ollama's (arguments as an object, no id)."""
    calls = []
    for j, c, where in _objects(m, "tool_calls"):
        fn = c.obj("function")
        if fn is None:
            raise BadRequest(f"'{where}.function' is required", param=f"{where}.function")
        arguments = fn.raw("arguments", {})
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        calls.append(ToolCall(c.text("id", "") or f"call_{j}", fn.text("name", required=True), text))
    return tuple(calls)


def openai_call(call: ToolCall, index: int) -> dict:
    return {"index": index, "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def ollama_call(call: ToolCall) -> dict:
    return {"function": {"name": call.name, "arguments": json.loads(call.arguments)}}


def _token_entry(token: int, logprob: float, token_bytes) -> dict:
    raw = token_bytes(token)
    return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}


def chat_logprob(lp: TokenLogprob, token_bytes) -> dict:
    """One `logprobs.content` entry of a chat completion."""
    entry = _token_entry(lp.token, lp.logprob, token_bytes)
    entry["top_logprobs"] = [_token_entry(t, v, token_bytes) for t, v in lp.top]
    return entry


def completion_logprobs(lps, token_bytes, offset: int = 0) -> dict:
    """The legacy completions `logprobs` object for a run of tokens."""
    tokens, values, tops, offsets = [], [], [], []
    for lp in lps:
        text = token_bytes(lp.token).decode("utf-8", "replace")
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({token_bytes(t).decode("utf-8", "replace"): v for t, v in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}
