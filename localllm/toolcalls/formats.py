"""How each model family writes a tool call, which family a model belongs to, and the
grammar that makes a model write exactly one valid call (tool_choice required or named).

Families (what the model writes after the assistant header):
- `hermes` (Qwen2.5, Qwen3, Hermes, many fine-tunes): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`,
  one block per call, text may come before.
- `llama3` (Llama 3.1/3.2/3.3): a bare JSON object `{"name": ..., "parameters": {...}}`,
  sometimes after `<|python_tag|>`.
- `mistral` (Mistral 7B v0.3, Nemo, Small): `[TOOL_CALLS]` then a JSON array of
  `{"name", "arguments"}`, or (newer tokenizers) `name[ARGS]{...}` per call.
- `json` (any other model): the plain-JSON fallback, a reply that is a call object or an
  array of them (```json fences allowed); the tools are described in the system prompt.

The family is chosen from the chat template's text and the vocabulary's control tokens.
Markers that are control tokens (`[TOOL_CALLS]`, `<|python_tag|>`) are dropped from text by
the detokenizer, so the request lists them in `GenerationRequest.special_text_ids` and
they reach the parser.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from typing import Mapping, Sequence

from localllm.tokenizer.protocol import Tokenizer


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    # Texts that open a tool-call region in the reply.
    markers: tuple[str, ...] = ()
    # Text that closes one call's block (hermes), or "" when calls run to the end.
    block_end: str = ""
    # The key a call object's arguments go under ("parameters" for Llama 3).
    arguments_key: str = "arguments"
    # Call ids this family's template accepts back (Mistral's: 9 letters and digits).
    id_style: str = "openai"

    def new_call_id(self) -> str:
        if self.id_style == "mistral":
            alphabet = string.ascii_letters + string.digits
            return "".join(secrets.choice(alphabet) for _ in range(9))
        return "call_" + secrets.token_hex(12)


HERMES = ToolCallFormat("hermes", markers=("<tool_call>",), block_end="</tool_call>")
LLAMA3 = ToolCallFormat("llama3", markers=("<|python_tag|>",), arguments_key="parameters")
MISTRAL = ToolCallFormat("mistral", markers=("[TOOL_CALLS]",), id_style="mistral")
PLAIN_JSON = ToolCallFormat("json")
FORMATS = {f.name: f for f in (HERMES, LLAMA3, MISTRAL, PLAIN_JSON)}


def detect_format(template: str | None, tokenizer: Tokenizer | None = None) -> ToolCallFormat:
    """The family whose tool-call format this model writes."""
    text = template or ""
    specials: Mapping[str, int] = tokenizer.special_tokens if tokenizer is not None else {}
    if "<tool_call>" in text:
        return HERMES
    if "[TOOL_CALLS]" in text or "[TOOL_CALLS]" in specials:
        return MISTRAL
    if "<|python_tag|>" in text or ("<|eom_id|>" in specials and "tools" in text):
        return LLAMA3
    return PLAIN_JSON


def template_takes_tools(template: str | None) -> bool:
    """Whether the chat template renders a `tools` list itself."""
    return bool(template) and "tools" in template


def marker_token_ids(fmt: ToolCallFormat, tokenizer: Tokenizer) -> frozenset[int]:
    """Control tokens whose text the reply must keep for this format's parser."""
    specials = tokenizer.special_tokens
    return frozenset(specials[m] for m in fmt.markers if m in specials)


def call_schema(tool: Mapping, arguments_key: str = "arguments") -> dict:
    """The JSON schema of one call of `tool` (an OpenAI `function` object)."""
    parameters = tool.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": tool["name"]}, arguments_key: parameters},
        "required": ["name", arguments_key],
        "additionalProperties": False,
    }


def _literal(text: str, tokenizer: Tokenizer) -> str:
    """`text` in a Lark grammar: a control token by id, other text as a string."""
    token = tokenizer.special_tokens.get(text)
    return f"<[{token}]>" if token is not None else json.dumps(text)


def call_grammar(fmt: ToolCallFormat, tools: Sequence[Mapping], tokenizer: Tokenizer) -> str:
    """A Lark grammar for one call, in the family's own wrapping, of one of `tools`
    (OpenAI `function` objects): what tool_choice "required" or a named function asks."""
    schemas = [call_schema(t, fmt.arguments_key) for t in tools]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    call = "%json " + json.dumps(schema)
    if fmt is HERMES:
        body = f'{_literal("<tool_call>", tokenizer)} "\\n" call "\\n" {_literal("</tool_call>", tokenizer)}'
    elif fmt is MISTRAL:
        body = f'{_literal("[TOOL_CALLS]", tokenizer)} " [" call "]"'
    else:
        body = "call"
    return f"start: {body}\ncall: {call}\n"
