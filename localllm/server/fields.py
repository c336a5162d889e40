"""Typed readers for JSON request bodies: every wrong type or out-of-range value becomes
a `BadRequest` naming the field, so the API modules never touch a raw dict unchecked.

JSON has no integer type of its own: 3.0 is accepted where an integer is asked, 3.5 is
not; booleans are never numbers (Python would let True pass as 1).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from localllm.server.errors import BadRequest


# Bounds on what a body may hold, past the byte cap: nesting (a deep document makes
# Python's recursive code fail later), integer size (huge ones cannot become floats and
# take quadratic time to print) and text that is not Unicode (lone surrogates, which
# JSON's \u escapes can write but no tokenizer can encode).
MAX_JSON_DEPTH = 64
MAX_JSON_INT = 1 << 64
# Messages in one chat: each costs a template loop and a tokenizer call, so a chat of
# 100,000 tiny messages under the byte cap would burn the CPU for minutes.
MAX_MESSAGES = 2048
_SURROGATE = re.compile("[\ud800-\udfff]")


async def read_json_object(request: Request) -> dict:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    return parse_json_object(await request.body())


def parse_json_object(raw: bytes) -> dict:
    if not raw.strip():
        raise BadRequest("the request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text: send a JSON object") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise BadRequest(f"the request body nests arrays or objects too deeply: at most {MAX_JSON_DEPTH} levels "
                         "are accepted") from None
    except ValueError as e:  # an integer of more digits than Python converts
        raise BadRequest(f"the request body holds a number this server cannot read ({_shorten(e)})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_json_type(data)}")
    check_json_bounds(data)
    return data


def check_json_bounds(data: Any) -> None:
    """A 400 for nesting deeper than MAX_JSON_DEPTH, integers beyond 64 bits, or text with
    lone surrogates. Iterative, so the check itself cannot run out of stack."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not -MAX_JSON_INT < value < MAX_JSON_INT:
            raise BadRequest("the request body holds an integer beyond 64 bits: no field takes one that large")


def _check_text(text: str) -> None:
    if _SURROGATE.search(text):
        raise BadRequest("the request body holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): "
                         "send valid Unicode text")


def _shorten(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """A JSON object with typed getters. `where` prefixes field names in messages
    (e.g. "options." or "messages[2].")."""

    def __init__(self, data: dict, where: str = ""):
        self.data = data
        self.where = where

    def name(self, key: str) -> str:
        return f"{self.where}{key}"

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _bad(self, key: str, expected: str, value: Any) -> BadRequest:
        return BadRequest(f"'{self.name(key)}' must be {expected}, not {_json_type(value)}", param=self.name(key))

    def raw(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadRequest(f"'{self.name(key)}' is required", param=self.name(key))
            return default
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        if required and not value:
            raise BadRequest(f"'{self.name(key)}' must not be empty", param=self.name(key))
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, "true or false", value)
        return value

    def number(self, key: str, default: float | None = None, *, lo: float | None = None,
               hi: float | None = None) -> float | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
            raise self._bad(key, "a number", value)
        self._check_range(key, value, lo, hi)
        return float(value)

    def integer(self, key: str, default: int | None = None, *, lo: int | None = None,
                hi: int | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer", value)
        self._check_range(key, value, lo, hi)
        return value

    def _check_range(self, key: str, value: float, lo: float | None, hi: float | None) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if lo is not None and hi is not None:
                span = f"between {lo:g} and {hi:g}"
            elif lo is not None:
                span = f"at least {lo:g}"
            else:
                span = f"at most {hi:g}"
            raise BadRequest(f"'{self.name(key)}' must be {span} (got {value:g})", param=self.name(key))

    def obj(self, key: str) -> "Fields | None":
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return Fields(value, f"{self.name(key)}.")

    def array(self, key: str, *, required: bool = False, limit: int | None = None) -> list | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadRequest(f"'{self.name(key)}' is required", param=self.name(key))
            return None
        if not isinstance(value, list):
            raise self._bad(key, "an array", value)
        if limit is not None and len(value) > limit:
            raise BadRequest(f"'{self.name(key)}' has {len(value)} items: at most {limit} are accepted",
                             param=self.name(key), code="too_many_items")
        return value

    def stops(self, key: str, limit: int = 16) -> tuple[str, ...]:
        """A stop sequence or a list of them (empty strings are dropped)."""
        value = self.data.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,) if value else ()
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise self._bad(key, "a string or an array of strings", value)
        if len(value) > limit:
            raise BadRequest(f"'{self.name(key)}' has {len(value)} stop sequences: at most {limit} are allowed",
                             param=self.name(key))
        return tuple(s for s in value if s)

    def refuse_if_set(self, key: str, why: str, *, allowed: tuple = (None, False, "", [], {})) -> None:
        """A 400 for a feature the server does not have, rather than silently ignoring it."""
        value = self.data.get(key)
        if value is None or any(type(value) is type(a) and value == a for a in allowed if a is not None):
            return
        raise BadRequest(f"'{self.name(key)}' is not supported: {why}", param=self.name(key))
