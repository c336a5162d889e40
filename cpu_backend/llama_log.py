"""Route llama.cpp's log output: silent unless verbose, with recent errors kept.

llama.cpp logs through one process-wide callback; we install ours once. When a load
fails, the last error lines it logged explain why, so they are kept for the message.
"""

from __future__ import annotations

import collections
import sys
import threading

import llama_cpp

GGML_LOG_LEVEL_INFO = 2
GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_CONT = 5  # continues the previous message, at its level


class LlamaLog:
    """The installed callback (kept referenced so ctypes does not free it) and its state."""

    def __init__(self) -> None:
        self.verbose = False
        self.recent_errors: collections.deque[str] = collections.deque(maxlen=8)
        self._last_level = GGML_LOG_LEVEL_INFO
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, None)

    def _on_log(self, level: int, text: bytes, _user_data) -> None:
        if level == GGML_LOG_LEVEL_CONT:
            level = self._last_level
        self._last_level = level
        message = text.decode("utf-8", errors="replace") if text else ""
        if level >= GGML_LOG_LEVEL_WARN and message.strip():
            self.recent_errors.append(message.strip())
        if self.verbose and level >= GGML_LOG_LEVEL_INFO:  # debug level is thousands of lines
            sys.stderr.write(message)

    def last_error(self) -> str:
        return self.recent_errors[-1] if self.recent_errors else ""


_lock = threading.Lock()
_instance: list[LlamaLog] = []


def install(verbose: bool) -> LlamaLog:
    """Install the callback once per process (and llama.cpp's backend); set verbosity."""
    with _lock:
        if not _instance:
            _instance.append(LlamaLog())
            llama_cpp.llama_backend_init()
        log = _instance[0]
        log.verbose = verbose
        return log
