"""Stop strings: never emitted, also when a stop string is split across tokens.

Text is held back while its end could still be the start of a stop string; once it
cannot, it is released. When a stop string completes, the text before it is released
and the stream ends.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add generated text; return what can safely be shown. Sets `stopped` when a
        stop string appears (its text and anything after it are dropped)."""
        if not self.stops:
            return text
        buf = self._pending + text
        first = -1
        for s in self.stops:
            i = buf.find(s)
            if i != -1 and (first == -1 or i < first):
                first = i
        if first != -1:
            self.stopped = True
            self._pending = ""
            return buf[:first]
        hold = self._held_suffix(buf)
        self._pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold]

    def _held_suffix(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """End of stream without a stop: release what was held back."""
        out, self._pending = self._pending, ""
        return out
