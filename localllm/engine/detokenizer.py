"""Streaming detokenizer: token ids in, complete UTF-8 text out.

A character can be split over several tokens (multi-byte characters, byte-fallback
tokens such as <0xE4>); the incremental decoder holds the incomplete bytes back until the
character is whole, so a stream never shows a broken character. A reply that ends inside
a character (cut by a token limit, a stop or a cancel) drops those bytes rather than
ending in U+FFFD, as llama.cpp's server does.
"""

from __future__ import annotations

import codecs
from typing import Callable


class StreamingDetokenizer:
    def __init__(self, token_bytes: Callable[[int], bytes], strip_leading_space: bool = False):
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = strip_leading_space

    def add(self, token: int) -> str:
        """Feed one token; return the text it completes (maybe empty)."""
        piece = self._token_bytes(token)
        if self._strip and piece:
            self._strip = False
            if piece.startswith(b" "):
                piece = piece[1:]
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """End of stream: the bytes of a character still incomplete are dropped (they
        would only show as U+FFFD); invalid bytes were already replaced as they came."""
        self._decoder.reset()
        return ""
