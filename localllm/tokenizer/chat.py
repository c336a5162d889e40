"""Chat prompts: messages in, the exact tokens the model was trained on out.

`ChatPrompter` is the one entry point frontends use (through `localllm.runtime`).

How a conversation becomes tokens, for a model with a chat template:
1. The template is rendered twice: with the real message contents, and with each
   non-empty content replaced by a placeholder. The second render holds no user text,
   so it shows exactly which text is the template's own markup; walking both renders
   side by side finds each content in the real one, as written or in the forms templates
   write it (trimmed; reasoning models without the text before "</think>"). If a content
   cannot be found, the markup is kept and the content put in as written; if the
   template mangles the placeholder itself (`| upper`), that is a `ChatTemplateError`.
2. The rendered prompt is tokenized as one text with control tokens parsed, exactly as
   llama.cpp and transformers tokenize a rendered prompt, except that any control-token
   text found inside a message content (a user typing "<|im_end|>") is cut out and
   tokenized as plain text. (With SentencePiece vocabularies that mark the first word
   with a space, the cut may add a space there; nothing else changes.)
3. The control tokens of the result must be exactly those of the markup. If not (text
   that joins a content to the markup into a control token), each content is tokenized
   on its own as plain text instead.
So message contents can never produce a control or end-of-turn token, whatever a user
types. Roles are markup, so they must be plain names.

BOS: a template that writes `{{ bos_token }}` gets no second one; otherwise BOS is
prepended when the vocabulary asks for it.

Templates that reject a system message (Gemma's raise "System role not supported") get
it folded into the first user message, separated by a blank line, as Ollama does.

Models without a template (base models such as stories260K) continue the text as written:
the prompt is BOS plus the message contents in order, separated by blank lines, with no
role markup and nothing added for the generation prompt.
"""

from __future__ import annotations

import datetime
import json
import re
from functools import cached_property
from typing import Any, Callable, Sequence

from localllm.errors import UserError
from localllm.tokenizer.cancel import check_cancelled
from localllm.tokenizer.protocol import Tokenizer, token_text_or_empty
from localllm.tokenizer.templates import (
    OVERRIDE_HINT,
    ChatTemplate,
    ChatTemplateError,
    ChatTemplateRefused,
    load_template_file,
)
from localllm.types import Message

__all__ = ["ChatPrompter", "load_template_file", "BASE_MODEL_SEPARATOR"]

# How the base-model fallback joins message contents.
BASE_MODEL_SEPARATOR = "\n\n"

Segment = tuple[str, bool]  # (text, is message content)

# A message content's stand-in while the template's markup is found: private-use
# characters around letters (so case filters visibly change it) and the message index.
_PLACEHOLDER = re.compile("\ue000msg:([0-9]+)\ue001")


_ROLE = re.compile("[A-Za-z][A-Za-z0-9_-]{0,31}")


def _placeholder(index: int) -> str:
    return f"\ue000msg:{index}\ue001"


class ChatPrompter:
    """Turn a conversation into prompt tokens for one model.

    `tokenizer` is a `localllm.tokenizer.Tokenizer` (a loaded backend's `vocabulary`, or
    one from `load_tokenizer`); `template` is the model's Jinja chat template
    (None for base models, which continue the text as written).
    """

    def __init__(self, tokenizer: Tokenizer, template: str | None, model_name: str = "", *,
                 clock: Callable[[], datetime.datetime] = datetime.datetime.now):
        self.tokenizer: Tokenizer = tokenizer
        self.template = template
        self.model_name = model_name
        self._template = ChatTemplate(template, model_name, clock=clock) if template is not None else None
        self.stop_token_ids: frozenset[int] = frozenset(self.tokenizer.end_of_turn_ids)
        self._markup_memo: dict[int, bool] = {}
        if self._template is not None:
            self._markup_first_chars  # one look at the vocabulary's control tokens, at load time

    @property
    def has_template(self) -> bool:
        return self.template is not None

    # -- text ----------------------------------------------------------------------------

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt as text (what `encode` tokenizes, BOS aside)."""
        if self._template is None:
            return BASE_MODEL_SEPARATOR.join(m.content for m in messages)
        _, text = self._render_conversation(messages, add_generation_prompt, extra)
        return text

    def _render(self, conversation: list[dict], add_generation_prompt: bool, extra: dict) -> str:
        tok = self.tokenizer
        return self._template.render(
            conversation, add_generation_prompt=add_generation_prompt,
            bos_token=token_text_or_empty(tok, tok.bos_id), eos_token=token_text_or_empty(tok, tok.eos_id),
            **extra,
        )

    def _render_conversation(self, messages: Sequence[Message], add_generation_prompt: bool,
                             extra: dict) -> tuple[list[dict], str]:
        """(the conversation as rendered, its text), folding a refused system message."""
        conversation = [_template_message(m) for m in messages]
        for m in conversation:
            # Roles are rendered as markup (control tokens parsed): they must be names.
            if not isinstance(m["role"], str) or not _ROLE.fullmatch(m["role"]):
                raise UserError(f"message role {m['role']!r} is not a role name: use system, user, assistant or tool")
        try:
            return conversation, self._render(conversation, add_generation_prompt, extra)
        except ChatTemplateRefused:
            folded = _fold_system_message(conversation)
            if folded is None:
                raise
            try:
                return folded, self._render(folded, add_generation_prompt, extra)
            except ChatTemplateRefused:
                pass
            raise

    # -- tokens --------------------------------------------------------------------------

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        check_cancelled()  # the overflow policy encodes shorter and shorter chats: stop between them
        tok = self.tokenizer
        if self._template is None:
            ids = self._plain(BASE_MODEL_SEPARATOR.join(m.content for m in messages))
        else:
            conversation, text = self._render_conversation(messages, add_generation_prompt, extra)
            ids = self._tokenize_segments(self._segments(conversation, text, add_generation_prompt, extra))
        if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
            ids.insert(0, tok.bos_id)
        return ids

    def _segments(self, conversation: list[dict], text: str, add_generation_prompt: bool, extra: dict) -> list[Segment]:
        """`text` cut into the template's markup and the message contents."""
        skeleton_conversation = [
            {**m, "content": _placeholder(i) if m["content"] else ""} for i, m in enumerate(conversation)
        ]
        skeleton = self._render(skeleton_conversation, add_generation_prompt, extra)
        if not any(m["content"] for m in conversation):
            return [(text, False)]
        # The skeleton holds no user text, so every placeholder-shaped text in it is ours.
        split = _PLACEHOLDER.split(skeleton)
        markup, contents = split[::2], [conversation[int(i)]["content"] for i in split[1::2]]
        if any("\ue000" in part or "\ue001" in part for part in markup):
            raise ChatTemplateError(
                f"the chat template of {self.model_name or 'this model'} rewrites message contents in a way "
                f"localllm cannot tokenize safely: {OVERRIDE_HINT}"
            )
        aligned = _align(text, markup, contents)
        if aligned is not None:
            return aligned
        # The template changed contents in a way we cannot follow: keep its markup and
        # put the contents in as written.
        segments: list[Segment] = []
        for i, part in enumerate(markup):
            segments.append((part, False))
            if i < len(contents):
                segments.append((contents[i], True))
        return segments

    @cached_property
    def _markup_first_chars(self) -> frozenset[str]:
        """First characters of the texts of control and end-of-turn tokens: a content
        without any of them cannot hold one (the quick check before tokenizing it with
        control tokens parsed)."""
        tok = self.tokenizer
        texts = [*tok.special_tokens, *(tok.token_text(t) for t in self.stop_token_ids)]
        return frozenset(text[0] for text in texts if text)

    def _is_markup_token(self, token: int) -> bool:
        """True for the tokens only markup may produce: control and end-of-turn tokens."""
        known = self._markup_memo.get(token)
        if known is None:  # remembered: asking a backend is a foreign call per token
            known = self._markup_memo[token] = token in self.stop_token_ids or self.tokenizer.is_control(token)
        return known

    def _tokenize_segments(self, segments: list[Segment]) -> list[int]:
        tok = self.tokenizer
        expected = [t for text, is_content in segments if not is_content
                    for t in tok.encode(text, add_bos=False, special=True) if self._is_markup_token(t)]
        # Whole text with control tokens parsed; control-token texts inside contents cut out.
        pieces: list[tuple[str, bool]] = []  # (text, parse control tokens)
        parsed: list[str] = []
        for text, is_content in segments:
            if not is_content:
                parsed.append(text)
                continue
            for part, is_control_text in self._split_control_texts(text):
                if is_control_text:
                    pieces += [("".join(parsed), True), (part, False)]
                    parsed = []
                else:
                    parsed.append(part)
        pieces.append(("".join(parsed), True))
        ids: list[int] = []
        for text, special in pieces:
            check_cancelled()  # a client that left stops its tokenizing here
            if text:
                ids += tok.encode(text, add_bos=False, special=True) if special else self._plain(text)
        if [t for t in ids if self._is_markup_token(t)] == expected:
            return ids
        # Safe by construction: each content alone, as plain text.
        ids = []
        for text, is_content in segments:
            check_cancelled()
            if text:
                ids += self._plain(text) if is_content else tok.encode(text, add_bos=False, special=True)
        return ids

    def _split_control_texts(self, content: str) -> list[tuple[str, bool]]:
        """`content` cut around the texts that would become control tokens."""
        tok = self.tokenizer
        if not any(ch in content for ch in self._markup_first_chars):
            return [(content, False)]
        found = [t for t in tok.encode(content, add_bos=False, special=True) if self._is_markup_token(t)]
        if not found:
            return [(content, False)]
        parts: list[tuple[str, bool]] = []
        pos = 0
        for token in found:
            text = tok.token_text(token)
            at = content.find(text, pos) if text else -1
            if at < 0:  # cannot place it: treat the rest as one suspicious piece
                parts.append((content[pos:], True))
                return [p for p in parts if p[0]]
            parts += [(content[pos:at], False), (text, True)]
            pos = at + len(text)
        parts.append((content[pos:], False))
        return [p for p in parts if p[0]]

    def _plain(self, text: str) -> list[int]:
        """Tokens of `text` as plain text, with no control or end-of-turn token in them
        (a vocabulary may still split out a token marked user-defined: break its text)."""
        tok = self.tokenizer
        ids = tok.encode(text, add_bos=False, special=False)
        bad = next((t for t in ids if self._is_markup_token(t)), None)
        if bad is None or len(text) <= 1:
            return ids
        spelled = tok.token_text(bad)
        at = text.find(spelled) if spelled else -1
        if at < 0 or len(spelled) <= 1:
            return self._plain(text[:1]) + self._plain(text[1:])
        return (self._plain(text[:at]) + self._plain(spelled[:1]) + self._plain(spelled[1:])
                + self._plain(text[at + len(spelled):]))


def _align(text: str, markup: list[str], contents: list[str]) -> list[Segment] | None:
    """Find each content between its markup in `text`, in one of the forms templates
    write it; None if they do not fit. Markup segments are always the template's own text
    (from the placeholder render), never a user's."""
    segments: list[Segment] = []
    pos = 0
    for i, part in enumerate(markup):
        if not text.startswith(part, pos):
            return None
        segments.append((part, False))
        pos += len(part)
        if i == len(contents):
            break
        following = markup[i + 1]
        content = contents[i]
        for candidate in _as_templates_write(content):
            end = pos + len(candidate)
            if text.startswith(candidate, pos) and text.startswith(following, end):
                segments.append((candidate, True))
                pos = end
                break
        else:
            return None
    return segments if pos == len(text) else None


def _as_templates_write(content: str) -> dict[str, None]:
    """The ways templates are known to write a content: as is, trimmed, or (reasoning
    models: Qwen3, DeepSeek-R1) with the thinking before "</think>" dropped."""
    forms = [content, content.strip(), content.lstrip(), content.rstrip()]
    if "</think>" in content:
        answer = content.split("</think>")[-1]
        forms += [answer.lstrip("\n"), answer.strip()]
    return dict.fromkeys(forms)


def _template_message(m: Message) -> dict:
    """A message as chat templates read it (transformers' shape): tool calls with their
    arguments as an object, a tool result with its call id and function name."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # templates that write arguments with tojson still show what was sent


def _fold_system_message(conversation: list[dict]) -> list[dict] | None:
    """The system message merged into the first user message; None without one."""
    if not conversation or conversation[0]["role"] != "system":
        return None
    system, rest = conversation[0], conversation[1:]
    if rest and rest[0]["role"] == "user":
        merged = f"{system['content']}\n\n{rest[0]['content']}" if system["content"] else rest[0]["content"]
        return [{**rest[0], "content": merged}, *rest[1:]]
    return [{"role": "user", "content": system["content"]}, *rest]
