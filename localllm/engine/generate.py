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

import abc
import time
from typing import Callable, Iterator, NamedTuple, Protocol, Sequence

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


class ProducerSteps(Protocol):
    """A producer's generation advanced one forward pass at a time by whoever runs the
    passes (see `SteppedProducer`)."""

    def plan(self, n_tokens: int = 1, others: float = 0.0, room: int | None = None) -> tuple[Sequence[int], float]:
        """(the tokens to feed next, pending token first, all positions' logits wanted when
        more than one; what the pass is expected to yield for this sequence). `n_tokens`:
        tokens of the pass so far counting this pending one; `others`: tokens the pass
        yields for other sequences; `room`: the most extra tokens the pass takes."""

    def choose(self, logits: Logits) -> None:
        """Choose tokens from the logits of the planned tokens (before the first plan: of
        the prompt's last position). Samples only: nothing here touches the backend."""

    def commit(self) -> list[ProducedToken]:
        """Bring the cache in line with what `choose` accepted; the tokens to hand out."""

    def deliver(self, produced: list[ProducedToken]) -> Iterator[ProducedToken]:
        """Hand out `produced` one at a time, counting what the consumer took."""

    def close(self) -> None:
        """Leave the cache holding what was handed out but the last token."""

    def quiet_steps(self) -> int:
        """For a sequence decoding alone: how many steps from now need nothing of the
        producer (0 if this one does). The runner may run them as plain decoding (each
        token sampled, appended to the history and handed out), then calls `resume`."""

    def resume(self, unused: int = 0) -> None:
        """Take in the tokens the plain steps added to the history, before the next `plan`
        or `close`; `unused`: of the quiet steps counted, those not run."""


class SteppedProducer(abc.ABC):
    """A `TokenProducer` whose passes can also be run by someone else: the engine's batch
    scheduler (`engine/batching.py`) puts each step's tokens into the shared
    `forward_batch` with the other requests' tokens (speculative drafts ride in the batch)."""

    @abc.abstractmethod
    def start(self, backend: Backend, cache: Cache, sampler: Sampler, history: list[int],
              stats: GenerationStats) -> ProducerSteps | None:
        """The steps of one generation (`history`: the prompt), or None where this cache
        needs plain decoding."""

    @abc.abstractmethod
    def record_pass(self, n_tokens: int, seconds: float | None, sequences: int = 1) -> None:
        """A forward pass of `n_tokens` over `sequences` sequences took `seconds`, its
        sampling included; None: a pass that was not timed (it carried a prompt chunk)."""

    @abc.abstractmethod
    def __call__(self, backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                 history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
        """The `TokenProducer` alone over one cache."""


def plain_decoding(backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                   history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
    """One token per forward pass; one step ahead (`greedy_ahead`) where the token is a
    plain argmax and the backend decodes ahead."""
    if sampler.plain_greedy and backend.decodes_ahead:
        yield from greedy_ahead(backend, cache, logits, history)
        return
    sample, forward = sampler.sample_row, backend.forward
    while True:
        token = sample(logits, -1, history)
        history.append(token)
        yield ProducedToken(token, False, sampler.last_logprob)
        logits = forward((token,), cache)


def greedy_ahead(backend: Backend, cache: Cache, logits: Logits, history: list[int]) -> Iterator[ProducedToken]:
    """Plain greedy decoding pipelined as mlx-lm's generate loop: the next token is picked
    on the device and fed to the next forward pass before the host reads it, so the host's
    work on token n (the consumer's detokenizing, stops, streaming, and building step
    n+1) overlaps the device computing step n+1. Same tokens as `plain_decoding` (the same
    device argmax over the same logits). Only where nothing on the host adjusts the
    logits (penalties, bias, constraints, logprobs and seeded draws stay synchronous).

    The cache ends as `plain_decoding` leaves it: the last yielded token, already fed
    ahead, is cut off in the `finally` when the consumer stops (`drop_fed_ahead`). Nothing
    is fed ahead past the context; a consumer that asks for a token beyond it gets
    `forward`'s `ContextOverflowError`, as with plain decoding. This producer does not know
    the consumer's max_tokens, so the pass fed with the last token is computed and cut
    off; the engine's scheduler, which knows it, feeds no such pass."""
    pending = logits.argmax_pending(-1)
    fed_ahead = False  # whether the cache holds the last yielded token
    try:
        while True:
            logits = None
            if len(cache.tokens) < backend.n_ctx:
                logits = backend.forward((pending,), cache)
                fed_ahead = True
            token = pending.item()
            history.append(token)
            yield ProducedToken(token)
            if logits is None:
                logits = backend.forward((token,), cache)
            fed_ahead = False  # asked for more: the token belongs in the cache now
            pending = logits.argmax_pending(-1)
    finally:
        if fed_ahead:
            drop_fed_ahead(backend, cache)


def drop_fed_ahead(backend: Backend, cache: Cache) -> None:
    """Cut the last token, fed ahead and not wanted, off `cache`, leaving it as synchronous
    decoding would. Where the cache's capability forbids that cut (a sliding-window cache
    kept with no spare positions) it keeps the token: it still lists what it holds."""
    n = len(cache.tokens) - 1
    if backend.cache_capability(cache).allows(n):
        backend.trim(cache, n)


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
