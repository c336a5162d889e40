"""llama-server's rules for ending a code completion early, applied to the text as it is
generated (a `TextLimit` for `GenerationResponse`):

- `n_indent`: every line after the first must be indented by at least this many spaces
  or tabs; the first line that is not (a blank line included) is left out and ends the
  reply, which keeps a completion inside the block the cursor is in.
- `t_max_predict_ms`: once a newline has been generated, the reply ends when this much
  time has passed since the first token, so an editor gets a few whole lines in time.
"""

from __future__ import annotations

import time
from typing import Callable


class InfillTextLimit:
    def __init__(self, n_indent: int = 0, t_max_predict_ms: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        self.n_indent = n_indent
        self.t_max_s = t_max_predict_ms / 1000
        self.stopped = False
        self._clock = clock
        self._t_first: float | None = None
        self._seen_newline = False
        self._indent: str | None = None  # whitespace of a new line, held until its first character

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if self._t_first is None:
            self._t_first = self._clock()
        out = []
        for ch in text:
            if self._indent is not None:
                if ch in " \t":
                    self._indent += ch
                    continue
                if len(self._indent) < self.n_indent:
                    self.stopped = True
                    self._indent = None
                    break
                out.append(self._indent)
                self._indent = None
            out.append(ch)
            if ch == "\n":
                self._seen_newline = True
                if self.n_indent > 0:
                    self._indent = ""
        if (not self.stopped and self.t_max_s > 0 and self._seen_newline
                and self._clock() - self._t_first > self.t_max_s):
            self.stopped = True
        return "".join(out)

    def flush(self) -> str:
        """Whitespace still held at the end of the text (the reply ended inside it)."""
        held, self._indent = self._indent or "", None
        return "" if self.stopped else held
