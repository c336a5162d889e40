"""The thread-side work, without a UI: what `stream_reply_worker`, `load_model_worker`
and `pull_model_worker` post, and how streaming updates coalesce."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from localllm.errors import ContextOverflowError, ModelFileError
from localllm.tui.messages import (
    ModelLoaded, ModelLoadFailed, PullFinished, PullProgressed, ReplyDelta, ReplyFinished, ReplyStarted,
)
from localllm.tui.workers import load_model_worker, model_label, pull_model_worker, stream_reply_worker
from localllm.runtime import LoadedModel
from localllm.types import GenerationChunk, GenerationStats, Message, SamplingParams


class FakeHandle:
    def __init__(self, pieces, on_chunk=None, error=None):
        self.pieces, self.on_chunk, self.error = pieces, on_chunk, error
        self.cancelled = False

    def cancel(self):
        self.cancelled = True

    def __iter__(self):
        for i, piece in enumerate(self.pieces):
            if self.cancelled:
                yield GenerationChunk("", None, "cancelled", GenerationStats(generated_tokens=i))
                return
            if self.on_chunk:
                self.on_chunk(i)
            yield GenerationChunk(piece, i)
        if self.error:
            raise self.error
        yield GenerationChunk("", None, "stop", GenerationStats(prompt_tokens=3, generated_tokens=len(self.pieces)))


def fake_model(handle, prompt=(1, 2, 3)):
    model = SimpleNamespace(
        chat_tokens=lambda messages: list(prompt), n_ctx=64, submit=lambda request: handle, overflow="refuse",
        request=lambda tokens, sampling, max_tokens, stop=(), dropped_messages=0, draft=None: (tokens, max_tokens),
    )
    # The real overflow rule, over the fake's tokens.
    model.fit_chat = lambda messages, max_tokens=None, policy=None: LoadedModel.fit_chat(model, messages, max_tokens, policy)
    return model


def test_stream_posts_full_text_and_finishes():
    posted = []
    handle = FakeHandle(["Hel", "lo", "", " world"])
    stream_reply_worker(fake_model(handle), [Message("user", "hi")], SamplingParams(), 0, 7, posted.append, threading.Event())
    assert isinstance(posted[0], ReplyStarted) and posted[0].prompt_tokens == 3 and posted[0].n_ctx == 64
    deltas = [m for m in posted if isinstance(m, ReplyDelta)]
    assert [d.text for d in deltas] == ["Hel", "Hello", "Hello world"]  # empty pieces post nothing
    assert [d.tokens for d in deltas] == [1, 2, 4]
    end = posted[-1]
    assert isinstance(end, ReplyFinished) and end.text == "Hello world" and end.finish_reason == "stop"
    assert end.stats.generated_tokens == 4


def test_stop_keeps_what_was_written_and_cancels_the_engine():
    posted = []
    stop = threading.Event()
    handle = FakeHandle(["a", "b", "c", "d", "e"], on_chunk=lambda i: stop.set() if i == 2 else None)
    stream_reply_worker(fake_model(handle), [], SamplingParams(), 0, 1, posted.append, stop)
    end = posted[-1]
    assert end.finish_reason == "cancelled" and end.text == "ab"
    assert handle.cancelled


def test_errors_end_the_reply_with_a_message():
    posted = []
    handle = FakeHandle(["x"], error=ContextOverflowError(900, 512))
    stream_reply_worker(fake_model(handle), [], SamplingParams(), 0, 1, posted.append, threading.Event())
    end = posted[-1]
    assert end.finish_reason == "error" and "context holds 512" in end.error and end.text == "x"

    posted.clear()
    model = fake_model(handle)
    model.chat_tokens = lambda messages: 1 / 0
    stream_reply_worker(model, [], SamplingParams(), 0, 1, posted.append, threading.Event())
    assert posted[-1].finish_reason == "error" and posted[-1].error.startswith("ZeroDivisionError")


def test_updates_coalesce_only_within_one_reply():
    a1, a2, b = ReplyDelta(1, "a", 1, 0.1, 0.1), ReplyDelta(1, "ab", 2, 0.2, 0.1), ReplyDelta(2, "x", 1, 0.1, 0.1)
    assert a2.can_replace(a1) and not b.can_replace(a2)
    assert not ReplyFinished(1, "ab", "stop").can_replace(a2)  # the end is never dropped
    assert PullProgressed("m", "downloading", 2, 10).can_replace(PullProgressed("m", "downloading", 1, 10))
    assert not PullProgressed("m", "x", 1, 1).can_replace(PullProgressed("n", "x", 1, 1))


def test_load_worker_classifies_failures(tmp_path, isolated_home):
    from localllm.config import load_settings

    settings = load_settings()
    posted = []

    def failing(name, s):
        raise ModelFileError(f"{name}: no such model")

    load_model_worker("tinyllama:1b", settings, 0, posted.append, failing)
    assert isinstance(posted[-1], ModelLoadFailed) and posted[-1].missing  # a name: offer to pull
    load_model_worker(str(tmp_path / "broken.gguf"), settings, 0, posted.append, failing)
    assert posted[-1].missing is False  # a path: nothing to pull

    def crashing(name, s):
        raise RuntimeError("backend exploded")

    load_model_worker("x.gguf", settings, 0, posted.append, crashing)
    assert posted[-1].error == "RuntimeError: backend exploded"

    seen = {}

    def ok(name, s):
        seen["ctx"] = s.ctx_size
        return "MODEL"

    load_model_worker("m.gguf", settings, 1024, posted.append, ok)
    assert isinstance(posted[-1], ModelLoaded) and posted[-1].model == "MODEL" and seen["ctx"] == 1024


def test_pull_worker_reports_progress_and_outcome(isolated_home):
    from localllm.config import load_settings

    settings = load_settings()
    posted = []

    def pull(name, s, on_progress, cancel):
        for done in (0, 50, 100):
            on_progress(SimpleNamespace(status="downloading", digest="sha256:x", total=100, completed=done))
        return SimpleNamespace(name=name)

    pull_model_worker("m", settings, posted.append, threading.Event(), pull)
    assert [(p.completed, p.total) for p in posted[:-1]] == [(0, 100), (50, 100), (100, 100)]
    assert isinstance(posted[-1], PullFinished) and posted[-1].entry.name == "m"

    cancel = threading.Event()

    def cancelled_pull(name, s, on_progress, cancel):
        cancel.set()
        raise RuntimeError("cancelled")

    pull_model_worker("m", settings, posted.append, cancel, cancelled_pull)
    assert posted[-1].cancelled

    def broken(name, s, on_progress, cancel):
        raise ModelFileError("m: no such model in the registry")

    pull_model_worker("m", settings, posted.append, threading.Event(), broken)
    assert posted[-1].error == "m: no such model in the registry"


def test_model_label():
    assert model_label("/x/y/stories260K.gguf") == "stories260K"
    assert model_label("llama3.2:1b") == "llama3.2:1b"


def test_overflow_policy_refuses_or_drops_the_oldest_turns():
    history = [Message("system", "sys"), Message("user", "u1 " * 10), Message("assistant", "a1 " * 10),
               Message("user", "u2 " * 10), Message("assistant", "a2 " * 10), Message("user", "now")]

    def model_for(n_ctx):
        m = fake_model(FakeHandle(["ok"]))
        m.n_ctx = n_ctx
        m.chat_tokens = lambda messages: [0] * sum(len(x.content.split()) for x in messages)
        return m

    posted = []
    stream_reply_worker(model_for(40), history, SamplingParams(), 8, 1, posted.append, threading.Event(), "refuse")
    end = posted[-1]
    assert end.finish_reason == "error" and "context holds 40" in end.error and "Ctrl+S" in end.error

    posted.clear()
    stream_reply_worker(model_for(40), history, SamplingParams(), 8, 1, posted.append, threading.Event(), "drop-oldest")
    started = posted[0]
    assert isinstance(started, ReplyStarted) and started.dropped == 2 and started.prompt_tokens == 22
    assert posted[-1].finish_reason == "stop" and posted[-1].text == "ok"
