"""Cancelling prompt work from another thread: a client that leaves while its prompt is
rendered or tokenized stops that work at the next check, not after it.

    with cancel_scope(event):           # in the thread doing the work
        tokens = prompter.encode(...)   # raises GenerationCancelled once event is set

The scope is thread-local, so the prompter's signature stays the same for callers that
never cancel (the CLI, the chat app).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from localllm.errors import GenerationCancelled

_local = threading.local()


@contextmanager
def cancel_scope(event: threading.Event | None) -> Iterator[None]:
    previous = getattr(_local, "event", None)
    _local.event = event
    try:
        yield
    finally:
        _local.event = previous


def current_cancel_event() -> threading.Event | None:
    return getattr(_local, "event", None)


def check_cancelled() -> None:
    """Raise GenerationCancelled if this thread's work was cancelled."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise GenerationCancelled("the request was cancelled while its prompt was prepared")
