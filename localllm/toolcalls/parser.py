"""A model's reply, streamed or whole, split into plain text and tool calls.

`ToolCallParser(format).feed(text)` returns what can be passed on now: text the client
may see, and each `ToolCall` as soon as it is complete; `finish()` returns the rest. Text
is held back only while it could still be the start of a call: a possible marker's
prefix at the end of what came so far, or a reply that starts with `{`, `[` or a
```json fence (the JSON families write bare JSON). A region that does not parse as calls
is passed on as text, never dropped.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Union

from localllm.toolcalls.formats import HERMES, MISTRAL, ToolCallFormat
from localllm.types import ToolCall

Event = Union[str, ToolCall]
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```\s*$", re.S)
_MISTRAL_ARGS = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[ARGS\])?\s*(?=\{)")


def _as_call(obj, fmt: ToolCallFormat, new_id: Callable[[], str]) -> ToolCall | None:
    """A call from a decoded JSON value ({"name", "arguments"|"parameters"}), or None."""
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    call_id = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else new_id()
    return ToolCall(call_id, name, json.dumps(args, ensure_ascii=False))


def parse_json_calls(text: str, fmt: ToolCallFormat, new_id: Callable[[], str]) -> list[ToolCall] | None:
    """Calls in `text`: JSON objects or arrays of them, one after another (separated by
    whitespace, commas or semicolons), optionally fenced; None unless all of it is calls."""
    text = text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    decoder, pos, calls = json.JSONDecoder(), 0, []
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,;":
            pos += 1
        if pos == len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, fmt, new_id)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _parse_mistral(text: str, fmt: ToolCallFormat, new_id) -> list[ToolCall] | None:
    calls = parse_json_calls(text, fmt, new_id)
    if calls is not None:
        return calls
    # Newer Mistral tokenizers: name[ARGS]{...} (or name{...}) per call.
    decoder, pos, calls = json.JSONDecoder(), 0, []
    text = text.strip()
    while pos < len(text):
        m = _MISTRAL_ARGS.match(text, pos)
        if not m:
            return None
        try:
            args, pos = decoder.raw_decode(text, m.end())
        except ValueError:
            return None
        call = _as_call({"name": m.group(1), "arguments": args}, fmt, new_id)
        if call is None:
            return None
        calls.append(call)
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if text.startswith("[TOOL_CALLS]", pos):
            pos += len("[TOOL_CALLS]")
    return calls or None


class ToolCallParser:
    def __init__(self, fmt: ToolCallFormat, new_id: Callable[[], str] | None = None):
        self.fmt = fmt
        self.new_id = new_id or fmt.new_call_id
        self._buffer = ""
        self._started = False  # some non-space text was passed on already
        self._mode = "text"  # text | region (after a marker) | json (a reply that starts like JSON)
        self.calls: list[ToolCall] = []

    # -- feeding -------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        self._buffer += text
        out: list[Event] = []
        while True:
            before = (self._mode, len(self._buffer))
            if self._mode == "text":
                out += self._scan_text()
            elif self._mode == "region" and self.fmt.block_end:
                out += self._close_blocks()
            if (self._mode, len(self._buffer)) == before:
                return self._tidy(out)

    def finish(self) -> list[Event]:
        rest, self._buffer = self._buffer, ""
        if not rest:
            return []
        if self._mode == "text":
            return self._tidy([rest])
        calls = self._parse_region(rest)
        if calls is None:
            return [rest]
        self.calls += calls
        return list(calls)

    def _tidy(self, events: list[Event]) -> list[Event]:
        # Between and after calls, line breaks are the format's, not text for the user.
        return [e for e in events if not (self.calls and isinstance(e, str) and not e.strip())]

    def parse(self, text: str) -> tuple[str, list[ToolCall]]:
        """A whole reply: (its text, its calls)."""
        events = self.feed(text) + self.finish()
        return "".join(e for e in events if isinstance(e, str)), [e for e in events if isinstance(e, ToolCall)]

    # -- states --------------------------------------------------------------------------

    def _scan_text(self) -> list[Event]:
        buf = self._buffer
        if not self._started:
            stripped = buf.lstrip()
            if not stripped:
                return []
            if len(stripped) < 3 and "```".startswith(stripped):
                return []  # maybe a fence: wait for the next piece
            if stripped[0] in "{[" or stripped.startswith("```"):
                self._mode = "json"
                return []
        at, marker = min(((buf.find(m), m) for m in self.fmt.markers if m in buf), default=(-1, ""))
        if at >= 0:
            self._mode = "region"
            head, self._buffer = buf[:at], buf[at:]
            return self._text(head)
        keep = max((n for m in self.fmt.markers for n in range(1, len(m)) if buf.endswith(m[:n])), default=0)
        head, self._buffer = buf[: len(buf) - keep], buf[len(buf) - keep:]
        return self._text(head)

    def _text(self, text: str) -> list[Event]:
        if text.strip():
            self._started = True
        return [text] if text else []

    def _close_blocks(self) -> list[Event]:
        """Hermes: every complete <tool_call>...</tool_call> block becomes a call."""
        end = self._buffer.find(self.fmt.block_end)
        if end < 0:
            return []
        block, rest = self._buffer[: end + len(self.fmt.block_end)], self._buffer[end + len(self.fmt.block_end):]
        calls = self._parse_region(block)
        self._buffer = rest
        self._mode = "text"
        self._started = True
        if calls is None:
            return [block]
        self.calls += calls
        return list(calls)

    def _parse_region(self, text: str) -> list[ToolCall] | None:
        fmt = self.fmt
        body = text
        for m in fmt.markers:
            if body.lstrip().startswith(m):
                body = body.lstrip()[len(m):]
                break
        if fmt is HERMES:
            calls: list[ToolCall] = []
            for part in re.split(r"</tool_call>|<tool_call>", body):
                if part.strip():
                    found = parse_json_calls(part, fmt, self.new_id)
                    if found is None:
                        return None
                    calls += found
            return calls or None
        if fmt is MISTRAL:
            return _parse_mistral(body, fmt, self.new_id)
        return parse_json_calls(body, fmt, self.new_id)
