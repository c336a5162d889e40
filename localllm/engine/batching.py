"""Continuous batching: every running request advances in one forward pass per step.

The engine thread calls `step()` while requests are running. One step builds one
`forward_batch`: one token for each request that is decoding (or, for a request with a
`SteppedProducer` such as speculative decoding, its pending token and the drafts its
policy chose, with every position's logits), and then a chunk of prompt tokens for
requests still prefilling (oldest first), within the backend's `max_batch_tokens`: at
most `prefill_chunk` while others decode, so a long prompt that arrives while others
stream costs them one chunk's worth of delay per token, never the whole prompt; a full
batch when nothing decodes. Several streams decode for about the price of one, as
decoding a small batch on a CPU reads the weights once (memory-bound).

A step runs in three phases so that no logits view is overwritten before it is read:
choose every request's tokens from the pass's logits (sampling only), then commit
(speculative verification cuts rejected drafts off its cache, exactly as alone), then
hand the tokens to each request's consumer and end the requests that are done.

A request whose producer is some other `TokenProducer` runs through `generate`, one
chunk per step beside the batch.

Plain greedy requests on a backend that decodes ahead (MLX) run one step ahead, as
mlx-lm's generate loop: the step that feeds a request's token picked on the device is
queued before the host reads that token, so the host's work (sampling bookkeeping,
stops, streaming, building the next pass) overlaps the device's. The consumer takes
each token one pass later; a request ending with the token it was fed ahead gets it cut
from its cache again, so every cache ends as synchronous decoding leaves it. Sampling on
the host (penalties, bias, constraints, logprobs, seeded draws) stays synchronous.

Each request keeps its own cache (lent by the KV-cache manager, which shares prefixes
across them), sampler and `TokenConsumer` (stops, limits, stats). `--parallel N` bounds
the running requests (`RequestScheduler.parallel`); the engine queues the rest. A
cancelled request ends at the next step and its cache goes back to the manager at once.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

from localllm.backend.protocol import Backend, BatchItem, Cache, PendingToken
from localllm.engine.consumer import TokenConsumer
from localllm.engine.generate import (ProducedToken, ProducerSteps, SteppedProducer, TokenProducer, drop_fed_ahead,
                                       generate, make_sampler)
from localllm.engine.sampling import Sampler
from localllm.types import GenerationChunk, GenerationRequest, GenerationStats

# Prompt tokens per step while other requests decode: the most a new prompt delays them.
PREFILL_CHUNK = 256


@dataclasses.dataclass(eq=False)
class Running:
    """One admitted request: its cache, what of its prompt is still to be fed, and its
    sampler and consumer once the prompt is in."""

    handle: object  # engine.RequestHandle
    request: GenerationRequest
    cache: Cache
    lease: object | None  # the KV-cache manager's lease, when it lent the cache
    pending: list[int]  # prompt tokens not yet fed
    stats: GenerationStats
    t_start: float
    sampler: Sampler | None = None
    consumer: TokenConsumer | None = None
    history: list[int] = dataclasses.field(default_factory=list)
    next_token: int | PendingToken | None = None  # picked, not yet fed
    # Plain greedy on a backend that decodes ahead: the next token stays on the device
    # (`next_token` a PendingToken) and is fed before it is read (see `step`).
    ahead: bool = False
    # Whether the cache holds the last token the consumer took (fed ahead): one more
    # than synchronous decoding leaves, cut off when the request ends.
    holds_last: bool = False
    # A request with a stepped producer (speculative decoding): the producer, and its
    # steps once the prompt is in (None after that: plain decoding, the cache cannot be cut).
    stepped: SteppedProducer | None = None
    steps: ProducerSteps | None = None
    # While its drafting policy is quiet (off, no probe due) a stepped request decoding
    # alone runs as plain decoding, at exactly its cost: `steps` parked here, for
    # `plain_left` more steps (see `_plan`).
    parked: ProducerSteps | None = None
    plain_left: int = 0
    produced: list[ProducedToken] | None = None  # chosen this step, not yet handed out
    fed_produced: bool = False  # whether the cache already holds `produced` (fed ahead)
    # A request with some other token producer runs through `generate`, advanced one
    # chunk per step beside the batch.
    stream: Iterator[GenerationChunk] | None = None

    @property
    def decoding(self) -> bool:
        return self.consumer is not None


class RequestScheduler:
    """The running requests of one engine and the step that advances them all."""

    def __init__(self, backend: Backend, caches, parallel: int, prefill_chunk: int = PREFILL_CHUNK,
                 check_prompt: Callable[[int, int], None] | None = None,
                 producer_for: Callable[[GenerationRequest], TokenProducer | None] | None = None):
        self.backend = backend
        self.caches = caches
        self.parallel = max(1, parallel)
        self.prefill_chunk = max(1, min(prefill_chunk, backend.max_batch_tokens))
        self.check_prompt = check_prompt
        # The producer a request asks for; None (or no callable): plain decoding, batched.
        self.producer_for = producer_for
        self.running: list[Running] = []

    @property
    def has_room(self) -> bool:
        return len(self.running) < self.parallel

    # -- admission ------------------------------------------------------------------------

    def admit(self, handle, cache: Cache | None) -> None:
        """Start a request: a cache holding as much of its prompt as can be reused, the
        rest queued for prefill. Errors (an empty or too long prompt) end it at once."""
        out = handle._chunks
        request = handle.request
        stats = GenerationStats(backend=self.backend.name, prompt_tokens=len(request.prompt_tokens))
        if handle.cancelled:
            handle._finish(GenerationChunk("", None, finish_reason="cancelled", stats=stats))
            return
        lease = None
        try:
            if self.check_prompt is not None:
                self.check_prompt(len(request.prompt_tokens), self.backend.n_ctx)
            if cache is None:
                lease = self.caches.acquire(request.prompt_tokens)
                cache = lease.cache
                if lease.prompt != list(request.prompt_tokens):
                    request = dataclasses.replace(request, prompt_tokens=tuple(lease.prompt))
            prompt = list(request.prompt_tokens)
            n_cached = len(cache.tokens)
            if n_cached >= len(prompt) or cache.tokens != prompt[:n_cached]:
                raise ValueError("a request's cache must hold a proper prefix of its prompt")
        except BaseException as e:
            if lease is not None:
                self.caches.release(lease)
            out.put(e)
            handle._finish(None)
            return
        stats.prompt_tokens, stats.cached_tokens = len(prompt), n_cached
        r = Running(handle, request, cache, lease, prompt[n_cached:], stats, time.perf_counter(), history=prompt)
        producer = self.producer_for(request) if self.producer_for is not None else None
        if isinstance(producer, SteppedProducer):
            r.stepped = producer
        elif producer is not None:
            r.stream = generate(self.backend, cache, request, handle._cancel.is_set, producer)
        self.running.append(r)

    # -- one step -------------------------------------------------------------------------

    def step(self) -> None:
        """Cancel what was cancelled, then one forward pass for every running request."""
        for r in list(self.running):
            if r.handle.cancelled and r.stream is None:  # a stream sees it itself
                self._end(r, r.consumer.end("cancelled") if r.consumer else
                          GenerationChunk("", None, finish_reason="cancelled", stats=r.stats))
        for r in [r for r in self.running if r.stream is not None]:
            self._advance_stream(r)
        for r in [r for r in self.running if r.decoding and r.stream is None and r.ahead]:
            if not self._room_ahead(r):  # its next token is its last: read it, feed nothing
                r.ahead = False  # from here on this request decodes synchronously
                token = r.next_token.item()
                r.history.append(token)
                r.produced, r.fed_produced = [ProducedToken(token)], False
                self._hand_out(r)
        batched = [r for r in self.running if r.stream is None]
        if not batched:
            return
        items, fed, drafting, timed = self._plan(batched)
        if not items:
            return
        started = time.perf_counter()
        try:
            logits = self.backend.forward_batch(items)
        except BaseException as e:
            for r, _ in fed:
                r.handle._chunks.put(e)
                self._end(r, None)
            return
        ready = [(r, rows) for (r, done), rows in zip(fed, logits) if done]
        for r, rows in ready:  # 1. choose, from this pass's logits (sampling only)
            if not r.decoding:
                self._start_decoding(r)
                if r.consumer.finish is not None:  # max_tokens 0: the prompt is cached, nothing more
                    continue
                if r.ahead:  # read at the next step, once the pass that feeds it is queued
                    r.next_token = rows.argmax_pending(-1)
                    continue
            elif r.ahead:
                # This pass fed the token picked on the device last step; read it only now,
                # with this pass queued, and pick the next one on the device.
                token = r.next_token.item()
                r.history.append(token)
                r.produced, r.fed_produced = [ProducedToken(token)], True
                r.next_token = rows.argmax_pending(-1)
                continue
            if r.steps is not None:
                r.steps.choose(rows)
            else:
                token = r.sampler.sample_row(rows, -1, r.history)
                r.history.append(token)
                r.produced, r.fed_produced = [ProducedToken(token, False, r.sampler.last_logprob)], False
        for r, _ in ready:  # 2. commit: rejected drafts cut off
            if r.steps is not None and r.consumer.finish is None:
                r.produced, r.fed_produced = r.steps.commit(), False
        if drafting is not None:
            drafting.record_pass(sum(len(item.tokens) for item in items),
                                 time.perf_counter() - started if timed else None, len(items))
        for r, _ in ready:  # 3. hand out, end what is done
            self._hand_out(r)

    def _plan(self, batched: list[Running]):
        """The items of this step's pass: decoding requests first (with any drafts their
        policy chose, given what the pass costs and yields for the others), then prompt
        chunks. Returns (items, [(request, whether its item ends its prompt)], a stepped
        producer to time the pass for, or None, and whether the pass is timed)."""
        items: list[BatchItem] = []
        fed: list[tuple[Running, bool]] = []
        decoding = [r for r in batched if r.decoding]
        alone = len(decoding) == 1
        steppers = []
        for r in decoding:
            if r.parked is not None:
                if r.plain_left and alone:
                    r.plain_left -= 1
                else:  # a probe is due, or others decode too (drafts may pay in a batch)
                    self._unpark(r)
            elif r.steps is not None and alone:
                quiet = r.steps.quiet_steps()
                if quiet:  # decode plainly for that many steps, this one included
                    r.parked, r.steps, r.plain_left = r.steps, None, quiet - 1
            if r.steps is None:
                items.append(BatchItem(r.cache, (r.next_token,)))
                fed.append((r, True))
            else:
                steppers.append(r)
        n_tokens = yields = len(decoding)
        for r in steppers:
            room = self.backend.max_batch_tokens - n_tokens
            tokens, expected = r.steps.plan(n_tokens, yields - 1, room)
            n_tokens += len(tokens) - 1
            yields += expected - 1
            items.append(BatchItem(r.cache, tokens, len(tokens) > 1))
            fed.append((r, True))
        room = self.backend.max_batch_tokens - n_tokens
        if decoding:
            room = min(room, self.prefill_chunk)
        for r in batched:
            if room <= 0:
                break
            if not r.decoding:
                n = min(room, len(r.pending))
                # Never one prompt token left for a later pass: a pass of several tokens of
                # a sequence computes them as one pass of the whole prompt does, a token
                # fed alone may round otherwise (llama.cpp without flash attention).
                if len(r.pending) - n == 1 and n > 2:
                    n -= 1
                take = r.pending[:n]
                del r.pending[:len(take)]
                room -= len(take)
                items.append(BatchItem(r.cache, take))
                fed.append((r, not r.pending))
        # The pass is timed for the drafting policy of a request with drafting steps in
        # it (or parked: its plain steps keep c(1) current), unless it carries a prompt
        # chunk (those cost differently from decoding).
        drafting = next((r.stepped for r in decoding if r.steps is not None or r.parked is not None), None)
        return items, fed, drafting, len(items) == len(decoding)

    @staticmethod
    def _unpark(r: Running) -> None:
        """Back to drafting steps after steps run as plain decoding (see `Running.parked`)."""
        r.steps, r.parked = r.parked, None
        r.steps.resume(r.plain_left)
        r.plain_left = 0

    def _room_ahead(self, r: Running) -> bool:
        """Whether `r` may want a token after its next one, with room in the context to
        feed the next one ahead (so nothing is computed past where it stops)."""
        return r.consumer.remaining > 1 and len(r.cache.tokens) < self.backend.n_ctx

    def _hand_out(self, r: Running) -> None:
        """Feed the tokens chosen for `r` this step to its consumer, up to where it stops
        (none yet for a request whose first token is still on the device); end it there."""
        consumer, produced, fed = r.consumer, r.produced, r.fed_produced
        r.produced = None
        if consumer.finish is None and produced is not None:
            r.holds_last = fed  # the cache holds the last token handed out (fed ahead)
            put = r.handle._chunks.put
            for token in (r.steps.deliver(produced) if r.steps is not None else produced):
                chunk = consumer.feed(token.token, token.from_draft, token.logprob)
                if chunk is not None:
                    put(chunk)
                if consumer.finish is not None:
                    break
                if r.handle.cancelled:  # after each token, as `generate` does
                    consumer.finish = "cancelled"
                    break
            if consumer.finish is None and not fed:
                r.next_token = token.token
        if consumer.finish is not None:
            self._end(r, consumer.end())

    def _advance_stream(self, r: Running) -> None:
        """One chunk of a request that runs through `generate` with its own producer."""
        try:
            chunk = next(r.stream)
        except StopIteration:
            self._end(r, None)
            return
        except BaseException as e:
            r.handle._chunks.put(e)
            self._end(r, None)
            return
        if chunk.finish_reason is not None:
            r.stream.close()
            self._end(r, chunk)
        else:
            r.handle._chunks.put(chunk)

    def _start_decoding(self, r: Running) -> None:
        r.stats.prefill_s = time.perf_counter() - r.t_start
        r.sampler = make_sampler(self.backend, r.request)
        r.consumer = TokenConsumer(self.backend.vocabulary, r.request, self.backend.n_ctx, r.stats, r.t_start)
        if r.request.max_tokens == 0:
            r.consumer.finish = "length"
            return
        if r.stepped is not None:
            r.steps = r.stepped.start(self.backend, r.cache, r.sampler, r.history, r.stats)
        r.ahead = (r.steps is None and r.sampler.plain_greedy and self.backend.decodes_ahead
                   and self._room_ahead(r))

    def _end(self, r: Running, last: GenerationChunk | None) -> None:
        """Finish `r`: its cache back to the manager (its sequence is free for the next
        request), then its last chunk."""
        self.running.remove(r)
        try:
            if r.parked is not None:
                self._unpark(r)
            if r.steps is not None:  # rejected or unused drafts leave the cache
                r.steps.close()
            if r.holds_last:  # fed ahead: leave the cache as synchronous decoding would
                r.holds_last = False
                drop_fed_ahead(self.backend, r.cache)
        finally:
            self._release(r, last)

    def _release(self, r: Running, last: GenerationChunk | None) -> None:
        try:
            if r.lease is not None:
                self.caches.release(r.lease)
        finally:
            r.handle._finish(last)

    def fail_all(self, error: BaseException) -> None:
        """A step raised where no request's own error was expected (a bug): every running
        request ends with `error`, each client gets it instead of waiting forever, and
        the scheduler is empty for the next requests."""
        for r in list(self.running):
            r.handle._chunks.put(error)
            try:
                if r.stream is not None:
                    r.stream.close()
                self._end(r, None)
            except BaseException:  # its state is what failed: free the place, end the client
                if r in self.running:
                    self.running.remove(r)
                r.handle._finish(None)

    def close(self) -> None:
        for r in list(self.running):
            if r.stream is not None:
                r.stream.close()
            self._end(r, GenerationChunk("", None, finish_reason="cancelled", stats=r.stats))
