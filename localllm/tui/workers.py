"""Work done off the UI thread: loading a model, streaming a reply, pulling a model.

Each function runs on a Textual thread worker and reports only through `post`, a
callable taking a message from `localllm.tui.messages` (a widget's `post_message`, which
is thread-safe). None of them touches a widget or the conversation store.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from localllm.errors import ContextOverflowError, UserError
from localllm.registry.names import looks_like_path
from localllm.tui.messages import (
    ModelLoaded, ModelLoadFailed, PullFinished, PullProgressed, ReplyDelta, ReplyFinished, ReplyStarted,
)
from localllm.types import DraftParams, Message, SamplingParams

Post = Callable[[object], object]


def default_loader(name: str, settings, force: bool = False):
    from localllm.runtime import load_model

    if force:  # load even when the memory check says it will not fit (--force)
        return load_model(name, settings, force=True)
    return load_model(name, settings)


def model_label(name: str) -> str:
    """How a model is named on screen: a GGUF path shows its file name without `.gguf`."""
    return Path(name).stem if looks_like_path(name) else name


def is_missing(name: str, settings) -> bool:
    """True when `name` is a model name the registry does not have (so pulling it may help)."""
    if looks_like_path(name):
        return False
    try:
        from localllm.registry import resolve_model_path

        resolve_model_path(name, settings)
    except UserError:
        return True
    except Exception:
        return False
    return False


def load_model_worker(name: str, settings, ctx_size: int, post: Post, loader=default_loader) -> None:
    """Load `name` with a context of `ctx_size` tokens (0: the settings' default)."""
    effective = replace(settings, ctx_size=ctx_size, ctx_size_asked=True) if ctx_size > 0 else settings
    try:
        model = loader(name, effective)
    except UserError as e:
        post(ModelLoadFailed(name, str(e), missing=is_missing(name, settings)))
        return
    except Exception as e:  # a bug or a backend crash must not take the app down
        post(ModelLoadFailed(name, f"{type(e).__name__}: {e}", missing=False))
        return
    post(ModelLoaded(name, model, ctx_size))


def stream_reply_worker(
    model,
    messages: Sequence[Message],
    sampling: SamplingParams,
    max_tokens: int,
    message_id: int,
    post: Post,
    stop: threading.Event,
    overflow: str = "refuse",
    clock: Callable[[], float] = time.perf_counter,
    stop_strings: Sequence[str] = (),
    draft: DraftParams | None = None,
) -> None:
    """Generate one reply and post its progress. Setting `stop` ends it at once, keeping
    what was written (the engine is told to cancel; its remaining output is discarded)."""
    text = ""
    n_tokens = 0
    ttft: float | None = None
    t0 = clock()
    try:
        tokens, dropped = model.fit_chat(messages, max_tokens, policy=overflow)
        post(ReplyStarted(message_id, len(tokens), model.n_ctx, dropped))
        handle = model.submit(model.request(tokens, sampling, max_tokens or None, stop_strings,
                                            dropped_messages=dropped, draft=draft))
        finish, stats = "stop", None
        for chunk in handle:
            if stop.is_set():
                break
            if chunk.token is not None:
                n_tokens += 1
            if chunk.text:
                text += chunk.text
                if ttft is None:
                    ttft = clock() - t0
                post(ReplyDelta(message_id, text, n_tokens, clock() - t0, ttft))
            if chunk.finish_reason is not None:
                finish, stats = chunk.finish_reason, chunk.stats
        if stop.is_set():
            handle.cancel()
            for chunk in handle:  # let the engine finish its step; keep only its stats
                if chunk.stats is not None:
                    stats = chunk.stats
            finish = "cancelled"
    except ContextOverflowError as e:
        # The numbers, then what to do here rather than the command line's flags.
        kept = f" plus {e.reserve} kept for the reply" if e.reserve > 1 else ""
        post(ReplyFinished(message_id, text, "error", None, error=(
            f"this chat needs {e.prompt_tokens} tokens{kept}, but the context holds {e.limit}: "
            "start a new chat (Ctrl+N), or in this chat's settings (Ctrl+S) "
            "raise the context size or let the oldest turns go")))
        return
    except UserError as e:
        post(ReplyFinished(message_id, text, "error", None, error=str(e)))
        return
    except Exception as e:
        post(ReplyFinished(message_id, text, "error", None, error=f"{type(e).__name__}: {e}"))
        return
    post(ReplyFinished(message_id, text, finish, stats))


def pull_model_worker(name: str, settings, post: Post, cancel: threading.Event, pull=None) -> None:
    """Pull `name` through the registry, posting progress; `cancel` stops the download."""
    try:
        if pull is None:
            from localllm.registry import pull_model as pull

        def progress(p) -> None:
            post(PullProgressed(name, p.status, p.completed or 0, p.total or 0))

        entry = pull(name, settings, on_progress=progress, cancel=cancel)
    except Exception as e:
        if cancel.is_set():
            post(PullFinished(name, None, cancelled=True))
        else:
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            post(PullFinished(name, None, error=message))
        return
    if cancel.is_set():
        post(PullFinished(name, None, cancelled=True))
    else:
        post(PullFinished(name, entry))
