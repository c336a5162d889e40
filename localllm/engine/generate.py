"""Generation as a token producer feeding one consumer.

A producer (`TokenProducer`) turns the logits of the prompt's last position into tokens:
`plain_decoding` samples one token per forward pass; speculative verification will be a
second producer that yields several tokens per pass, the ones a draft proposed and the
model confirmed marked `from_draft`. The producer owns the forward passes, the sampler's
history and the cache beyond the prompt; it forwards a token only when the consumer asks
for the next one, so nothing is computed past where the consumer stops.

`generate` is the consumer: prefill, then (through `TokenConsumer`, which the batched
scheduler in `engine/batching.py` uses too) end of generation, the streaming
detokenizer, stop strings, token and context limits, cancellation and stats, whatever
the producer.
It is a plain generator over one backend and one cache, usable directly (tests,
benchmarks) or from the engine thread. The cache must hold a proper prefix of the prompt
(the KV-cache manager lends it so, having decided what is reused); only the rest is fed.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, NamedTuple, Protocol

from localllm.backend.protocol import Backend, Cache, Logits
from localllm.engine.consumer import TokenConsumer
from localllm.engine.sampling import Sampler
from localllm.kvcache.overflow import check_context
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats, TokenLogprob


class ProducedToken(NamedTuple):
    token: int
    from_draft: bool = False  # proposed by a draft and accepted by the model
    # The sampler's `last_logprob` right after it picked this token (None unless the
    # request asked for logprobs).
    logprob: TokenLogprob | None = None


class TokenProducer(Protocol):
    def __call__(self, backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                 history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
        """Yield tokens, starting from `logits` (the prompt's last position; `cache`
        holds the prompt). Append each yielded token to `history` before yielding it.
        Pick every token through `sampler`, position by position: it applies the
        request's output constraint and computes its logprob (`sampler.last_logprob`).
        When closed early, leave `cache` holding only tokens whose keys are exact (a
        speculative producer cuts rejected drafts off in a `finally`). Drafting counts go
        to `stats.draft_tokens`."""


def plain_decoding(backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                   history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
    """One token per forward pass."""
    sample, forward = sampler.sample_row, backend.forward
    while True:
        token = sample(logits, -1, history)
        history.append(token)
        yield ProducedToken(token, False, sampler.last_logprob)
        logits = forward((token,), cache)


# Prefill runs in steps of this many tokens at most, so a request cancelled during a long
# prompt stops within one step instead of after the whole prompt.
PREFILL_STEP = 512


def prefill(backend: Backend, cache: Cache, tokens: list[int], cancelled: Callable[[], bool]) -> Logits | None:
    """Feed `tokens` after what `cache` holds, in steps; the logits of the last one, or
    None when `cancelled` turned true between steps."""
    start = 0
    while len(tokens) - start > PREFILL_STEP:
        backend.forward(tokens[start:start + PREFILL_STEP], cache)
        start += PREFILL_STEP
        if cancelled():
            return None
    return backend.forward(tokens[start:], cache)


def make_sampler(backend: Backend, request: GenerationRequest) -> Sampler:
    """The request's sampler, with its output constraint compiled for the model's vocabulary."""
    constraint = None
    if request.constraint is not None:
        from localllm.engine.constraint import compiler_for

        constraint = compiler_for(backend.vocabulary).matcher(request.constraint, backend.vocab_size)
    return Sampler(request.sampling, backend.vocab_size, constraint=constraint, logprobs=request.logprobs)


def generate(
    backend: Backend,
    cache: Cache,
    request: GenerationRequest,
    cancelled: Callable[[], bool] = lambda: False,
    producer: TokenProducer = plain_decoding,
) -> Iterator[GenerationChunk]:
    prompt = list(request.prompt_tokens)
    n_cached = len(cache.tokens)
    if not prompt or n_cached >= len(prompt) or cache.tokens != prompt[:n_cached]:
        raise ValueError("generate needs a non-empty prompt and a cache holding a proper prefix of it")
    check_context(len(prompt), backend.n_ctx)  # before any step of a prefill that cannot finish
    stats = GenerationStats(backend=backend.name, prompt_tokens=len(prompt), cached_tokens=n_cached)
    clock = time.perf_counter
    t_start = clock()
    logits = prefill(backend, cache, prompt[n_cached:], cancelled)
    stats.prefill_s = clock() - t_start
    if logits is None:  # cancelled during a long prefill
        yield GenerationChunk("", None, finish_reason="cancelled", stats=stats)
        return
    consumer = TokenConsumer(backend.vocabulary, request, backend.n_ctx, stats, t_start)
    if request.max_tokens == 0:  # prefill only: the cache now holds the prompt
        yield consumer.end("length")
        return
    sampler = make_sampler(backend, request)
    tokens = producer(backend, cache, logits, sampler, list(prompt), stats)
    try:
        for token, from_draft, logprob in tokens:
            chunk = consumer.feed(token, from_draft, logprob)
            if chunk is not None:
                yield chunk
            if consumer.finish is not None:
                break
            if cancelled():
                consumer.finish = "cancelled"
                break
    finally:
        tokens.close()
    yield consumer.end()
