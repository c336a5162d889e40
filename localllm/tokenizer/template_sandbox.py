"""Chat templates render in a separate process, under a budget.

A template is code from a model file or a client. Inside the process that serves
requests, one render holding the GIL (a huge number, a loop of loops) would stop every
other request and `/health`, and one that builds a 600 MB string would abort it. So
renders go to a small pool of worker processes (`python -m
localllm.tokenizer.template_sandbox`), one render at a time each:

  time     RENDER_TIME_BUDGET_S of wall clock, then the worker is killed
  memory   the worker's address space is capped (RLIMIT_AS, WORKER_MEMORY_BYTES)
  size     MAX_RENDER_CHARS of output, counted as it is written
  steps    `**`, `*` and `+` refuse to build huge numbers or sequences (BoundedSandbox)

The caller's thread waits on a pipe (no GIL held) and checks its cancel scope, so a
client that leaves stops its render too. Messages travel as JSON, length-prefixed.
A worker that dies or overruns is replaced by a fresh one on the next render.
"""

from __future__ import annotations

import datetime
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time

from localllm.errors import GenerationCancelled
from localllm.tokenizer.cancel import current_cancel_event

RENDER_TIME_BUDGET_S = 5.0
WORKER_MEMORY_BYTES = 1 << 30
MAX_RENDER_CHARS = 16 << 20
MAX_WORKERS = 4
_POLL_S = 0.05
_HEADER = struct.Struct("<Q")


class SandboxFailure(Exception):
    """A render that did not produce text: `kind` is "raised" (the template called
    raise_exception), "failed" (its own error), or "budget" (time, memory or size)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localllm.tokenizer.template_sandbox"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True,
        )

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def ask(self, request: bytes, deadline: float, cancel: threading.Event | None) -> dict:
        try:
            self.proc.stdin.write(_HEADER.pack(len(request)) + request)
            self.proc.stdin.flush()
        except OSError:
            raise SandboxFailure("budget", "stopped: its render process died (memory limit?)") from None
        size = _HEADER.unpack(self._read(_HEADER.size, deadline, cancel))[0]
        return json.loads(self._read(size, deadline, cancel))

    def _read(self, n: int, deadline: float, cancel: threading.Event | None) -> bytes:
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < n:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("the request was cancelled while its chat template rendered")
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxFailure("budget", f"took more than {RENDER_TIME_BUDGET_S:g} s to render and was stopped")
            ready, _, _ = select.select([fd], [], [], min(_POLL_S, left))
            if not ready:
                continue
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                raise SandboxFailure("budget", f"used more than {WORKER_MEMORY_BYTES >> 20} MiB or crashed while "
                                               "rendering, and was stopped")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


class _Pool:
    """Idle workers, reused; at most MAX_WORKERS renders at once (more wait)."""

    def __init__(self):
        self._idle: list[_Worker] = []
        self._slots = threading.Semaphore(MAX_WORKERS)
        self._lock = threading.Lock()

    def render(self, request: bytes) -> dict:
        cancel = current_cancel_event()
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None or worker.proc.poll() is not None:
                worker = _Worker()
            try:
                reply = worker.ask(request, time.monotonic() + RENDER_TIME_BUDGET_S, cancel)
            except BaseException:
                worker.kill()  # mid-render: its state is unknown
                raise
            with self._lock:
                self._idle.append(worker)
            return reply


# One pool per process, made on first use: the workers are a process-wide resource, like
# the threads of a thread pool (and they exit when this process does: their stdin closes).
_pool: _Pool | None = None
_pool_lock = threading.Lock()


def render_sandboxed(source: str, context: dict, now: datetime.datetime) -> str:
    """`source` rendered with `context` in a worker process; SandboxFailure otherwise."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool()
    # ASCII JSON: a lone surrogate in a message travels as an escape, not as invalid UTF-8.
    request = json.dumps({"source": source, "context": context, "now": now.isoformat()}, default=str).encode()
    reply = _pool.render(request)
    if "text" in reply:
        return reply["text"]
    raise SandboxFailure(reply.get("kind", "failed"), reply.get("detail", "failed"))


# -- the worker process ------------------------------------------------------------------

def _serve() -> None:
    """Answer render requests on stdin/stdout until stdin closes."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass  # no RLIMIT_AS here (macOS ignores it): the time budget still applies
    from localllm.tokenizer.templates import _Raised, render_in_process

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_HEADER.size)
        if len(head) < _HEADER.size:
            return
        request = json.loads(stdin.read(_HEADER.unpack(head)[0]))
        try:
            now = datetime.datetime.fromisoformat(request["now"])
            reply = {"text": render_in_process(request["source"], request["context"], now, MAX_RENDER_CHARS)}
        except _Raised as e:
            reply = {"kind": "raised", "detail": str(e)}
        except OverflowError as e:
            reply = {"kind": "budget", "detail": f"wrote too much ({e})"}
        except MemoryError:
            reply = {"kind": "budget", "detail": f"used more than {WORKER_MEMORY_BYTES >> 20} MiB while rendering"}
        except RecursionError:
            reply = {"kind": "budget", "detail": "recursed too deeply while rendering"}
        except Exception as e:  # TemplateError, SecurityError, TypeError from the template's own code
            reply = {"kind": "failed", "detail": f"failed ({type(e).__name__}: {' '.join(str(e).split())[:300]})"}
        data = json.dumps(reply).encode()
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()


if __name__ == "__main__":
    _serve()
