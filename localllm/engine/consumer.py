"""What happens to each generated token of one request, wherever it came from.

`TokenConsumer` is the consumer half of generation for one request: end-of-generation
ids, the streaming detokenizer, stop strings, the token and context limits, and stats.
It is fed one token at a time, whether by a single-request loop or by the batched
scheduler (`engine/batching.py`) that decodes several requests in one forward pass, so
every request keeps its own stops, limits and stats however it is scheduled.
"""

from __future__ import annotations

import resource
import sys
import time

from localllm.engine.detokenizer import StreamingDetokenizer
from localllm.engine.stops import StopMatcher
from localllm.tokenizer.protocol import Tokenizer
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats, TokenLogprob


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class TokenConsumer:
    """One request's bookkeeping from its first generated token to its last chunk.

    `feed(token)` returns the chunk to send (or None while text is held back) and sets
    `finish` once the request is over ("stop": an end token or a stop string; "length":
    max_tokens or the context); `end(reason)` gives the last chunk, with the stats.
    """

    def __init__(self, vocab: Tokenizer, request: GenerationRequest, n_ctx: int, stats: GenerationStats,
                 t_start: float):
        prompt = request.prompt_tokens
        strip = request.strip_leading_space and vocab.adds_space_prefix and prompt[-1] == vocab.bos_id
        token_bytes = vocab.token_bytes
        if request.special_text_ids:  # special tokens the request wants shown as their text
            shown = {t: vocab.token_text(t).encode() for t in request.special_text_ids}
            token_bytes = lambda t: shown.get(t) or vocab.token_bytes(t)  # noqa: E731
        self.detok = StreamingDetokenizer(token_bytes, strip_leading_space=strip)
        self.stops = StopMatcher(request.stop)
        self.eos = frozenset() if request.ignore_eos else vocab.end_of_turn_ids | request.stop_token_ids
        # The last token needs no forward pass, so the context can take one token more than it holds.
        most = n_ctx + 1 - len(prompt)
        if request.max_tokens is not None:
            most = min(most, request.max_tokens)
        self.most = most
        self.stats = stats
        self.t_start = t_start
        self.t_first = self.t_last = 0.0
        self.finish: str | None = None

    def feed(self, token: int, from_draft: bool = False, logprob: TokenLogprob | None = None) -> GenerationChunk | None:
        stats = self.stats
        self.t_last = time.perf_counter()
        if stats.generated_tokens == 0 and not self.t_first:
            self.t_first = self.t_last
            stats.ttft_s = self.t_last - self.t_start
        else:
            stats.decode_steps += 1
        if token in self.eos:
            self.finish = "stop"
            return None
        stats.generated_tokens += 1
        stats.accepted_tokens += from_draft
        text = self.stops.feed(self.detok.add(token))
        if self.stops.stopped:
            self.finish = "stop"
            return GenerationChunk(text, token, from_draft=from_draft, logprob=logprob) if text else None
        if stats.generated_tokens >= self.most:
            self.finish = "length"
        return GenerationChunk(text, token, from_draft=from_draft, logprob=logprob)

    @property
    def remaining(self) -> int:
        """Tokens the request may still take at most (max tokens, the context)."""
        return self.most - self.stats.generated_tokens

    def end(self, reason: str | None = None) -> GenerationChunk:
        """The last chunk: what the detokenizer and stop matcher still hold, and the stats."""
        if reason is not None and self.finish is None:
            self.finish = reason
        self.stats.decode_s = self.t_last - self.t_first
        tail = "" if self.stops.stopped else self.stops.feed(self.detok.flush()) + self.stops.flush()
        self.stats.peak_rss_bytes = peak_rss_bytes()
        return GenerationChunk(tail, None, finish_reason=self.finish, stats=self.stats)
