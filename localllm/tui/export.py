"""Export a conversation as a Markdown document."""

from __future__ import annotations

import re

from localllm.tui.store import Conversation, StoredMessage
from localllm.tui.workers import model_label

HEADINGS = {"user": "You", "assistant": "Assistant", "system": "System"}


def slug(title: str) -> str:
    """A file-name-safe form of a title: 'Hello, World!' -> 'hello-world'."""
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    return s[:60] or "chat"


def conversation_markdown(conversation: Conversation, messages: list[StoredMessage]) -> str:
    lines = [f"# {conversation.title}", ""]
    meta = []
    if conversation.model:
        meta.append(f"model: {model_label(conversation.model)}")
    s = conversation.settings
    meta.append(f"temperature: {s.temperature:g}, top-p: {s.top_p:g}")
    lines += [f"*{'; '.join(meta)}*", ""]
    if s.system_prompt.strip():
        lines += ["## System", "", s.system_prompt.strip(), ""]
    for m in messages:
        heading = HEADINGS.get(m.role, m.role.capitalize())
        if m.role == "assistant" and m.model:
            heading += f" ({model_label(m.model)})"
        if m.state == "cancelled":
            heading += " — stopped"
        lines += [f"## {heading}", "", m.content.rstrip(), ""]
    return "\n".join(lines).rstrip() + "\n"
