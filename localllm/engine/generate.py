"""The generation loop: prefill what the cache lacks, then sample, detokenize, stop.

`generate` is a plain generator over one backend and one cache, usable directly (tests,
benchmarks) or from the engine thread. It reuses the longest common prefix between the
cache and the prompt, so a follow-up that extends an earlier prompt prefills only its
new tokens.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Callable, Iterator

from localllm.backend.protocol import Backend, Cache
from localllm.engine.detokenizer import StreamingDetokenizer
from localllm.engine.sampling import Sampler
from localllm.engine.stops import StopMatcher
from localllm.errors import ContextOverflowError, UserError
from localllm.kvcache.prefix import common_prefix_length
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def check_fits(n_prompt: int, n_ctx: int) -> None:
    if n_prompt == 0:
        raise UserError("the prompt is empty: give some text to continue")
    if n_prompt >= n_ctx:
        raise ContextOverflowError(
            f"the prompt has {n_prompt} tokens but the context holds {n_ctx}: "
            "shorten the prompt or raise --ctx-size"
        )


# Prefill runs in steps of this many tokens at most, so a request cancelled during a long
# prompt stops within one step instead of after the whole prompt.
PREFILL_STEP = 512


def prefill(backend: Backend, cache: Cache, prompt: list[int], cancelled: Callable[[], bool] = lambda: False):
    """Bring `cache` to hold `prompt` and return (logits of its last position, tokens
    reused); (None, tokens reused) when `cancelled` turned true between steps."""
    n_cached = common_prefix_length(cache.tokens, prompt)
    if n_cached == len(prompt):  # fully cached: recompute the last position for its logits
        n_cached -= 1
    if not backend.cache_capability(cache).allows(n_cached):
        n_cached = 0  # e.g. a sliding window that no longer holds the keys before the cut
    backend.trim(cache, n_cached)
    step = max(PREFILL_STEP, getattr(backend, "n_batch", PREFILL_STEP))
    start = n_cached
    while len(prompt) - start > step:
        backend.forward(prompt[start:start + step], cache)
        start += step
        if cancelled():
            return None, n_cached
    return backend.forward(prompt[start:], cache), n_cached


def generate(
    backend: Backend,
    cache: Cache,
    request: GenerationRequest,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[GenerationChunk]:
    prompt = list(request.prompt_tokens)
    check_fits(len(prompt), backend.n_ctx)
    stats = GenerationStats(backend=backend.name, prompt_tokens=len(prompt))
    clock = time.perf_counter
    t_start = clock()
    logits, stats.cached_tokens = prefill(backend, cache, prompt, cancelled)
    stats.prefill_s = clock() - t_start
    if logits is None:  # cancelled during a long prefill
        yield GenerationChunk("", None, finish_reason="cancelled", stats=stats)
        return
    if request.max_tokens <= 0:  # prefill only: the cache now holds the prompt
        stats.peak_rss_bytes = peak_rss_bytes()
        yield GenerationChunk("", None, finish_reason="length", stats=stats)
        return

    vocab = backend.vocabulary
    sampler = Sampler(request.sampling, backend.vocab_size)
    strip = request.strip_leading_space and vocab.adds_space_prefix and prompt[-1] == vocab.bos_id
    detok = StreamingDetokenizer(vocab.token_bytes, strip_leading_space=strip)
    stops = StopMatcher(request.stop)
    eos = frozenset() if request.ignore_eos else vocab.end_of_turn_ids | request.stop_token_ids
    history = prompt
    n_ctx = backend.n_ctx
    finish = None
    t_first = t_last = 0.0

    while True:
        token = sampler.sample_row(logits, -1, history)
        t_last = clock()
        if stats.generated_tokens == 0:
            t_first = t_last
            stats.ttft_s = t_last - t_start
        else:
            stats.decode_steps += 1
        if token in eos:
            finish = "stop"
            break
        history.append(token)
        stats.generated_tokens += 1
        text = stops.feed(detok.add(token))
        if stops.stopped:
            finish = "stop"
            if text:
                yield GenerationChunk(text, token)
            break
        yield GenerationChunk(text, token)
        if stats.generated_tokens >= request.max_tokens or len(cache.tokens) >= n_ctx:
            finish = "length"
            break
        if cancelled():
            finish = "cancelled"
            break
        logits = backend.forward((token,), cache)

    stats.decode_s = t_last - t_first
    tail = "" if stops.stopped else stops.feed(detok.flush()) + stops.flush()
    stats.peak_rss_bytes = peak_rss_bytes()
    yield GenerationChunk(tail, None, finish_reason=finish, stats=stats)
