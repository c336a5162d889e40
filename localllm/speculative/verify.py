"""Speculative verification: a token producer for the engine's consumer
(`localllm.engine.generate`) that checks drafted tokens in one forward pass.

Each step holds a pending token (chosen, yielded, not yet fed). The drafter proposes k
tokens to follow it; one forward pass over the pending token and the k drafts gives the
logits of every position; the sampler then chooses the token at each position exactly as
plain decoding would (same penalties over the same history, same logit bias, same seeded
draw), and the drafts are accepted while they equal those choices. The first choice that
differs (or the one after the last draft) becomes the next pending token, so every step
yields at least one token, and the rejected positions are cut from the cache.

Greedy decoding accepts exactly what plain decoding picks. With sampling this is the
standard speculative-sampling rule for a draft that proposes one token with certainty (as
prompt lookup does): a draft token d is accepted with probability min(1, p(d)/q(d)) =
p(d), and on rejection the token comes from the residual max(0, p - q), i.e. p without d,
renormalized. Drawing x from p and accepting d iff x == d realizes exactly that rule, and
by sharing the draw with plain decoding a seeded request gives the same text with and
without speculation (up to the float rounding of a batched forward pass).

The cache is left as plain decoding leaves it: holding what was yielded but the last
token, cut back in a `finally` when the consumer stops mid-step (a stop string or EOS in
an accepted draft, max tokens, cancellation) or anything raises. Caches that cannot be cut
back (recurrent state) get plain decoding; a sliding-window cache is cut only as far as
its capability allows (else it is refilled and drafting stops for that generation).
Drafts never reach past the context or past the tokens the consumer may still take.
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

from localllm.backend.protocol import Backend, Cache, Logits
from localllm.engine.generate import ProducedToken, SteppedProducer, plain_decoding, prefill
from localllm.engine.sampling import Sampler
from localllm.speculative.drafter import Drafter, DrafterFactory
from localllm.types import GenerationStats


class SpeculativeDecoding(SteppedProducer):
    """A `TokenProducer`: draft with `drafter_factory`, verify, let `policy` (adaptive or
    always) choose how many drafted tokens each step verifies. As a `SteppedProducer` its
    steps (`DraftingSteps`) also ride in the engine's shared batch: the pending token and
    its drafts are one item of a `forward_batch` beside the other requests' tokens."""

    def __init__(self, drafter_factory: DrafterFactory, policy, draft_max: int,
                 max_new_tokens: int | None = None, clock=time.perf_counter):
        self.drafter_factory = drafter_factory
        self.policy = policy
        self.draft_max = draft_max
        self.max_new_tokens = max_new_tokens
        self.clock = clock

    def start(self, backend: Backend, cache: Cache, sampler: Sampler, history: list[int],
              stats: GenerationStats) -> "DraftingSteps | None":
        if not backend.cache_capability(cache).trimmable:  # rejected drafts could not be undone
            return None
        return DraftingSteps(self, backend, cache, sampler, history, stats)

    def record_pass(self, n_tokens: int, seconds: float | None, sequences: int = 1) -> None:
        self.policy.record_forward(n_tokens, seconds, sequences)

    def __call__(self, backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                 history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
        """One sequence alone: each step's pending token and drafts in a pass of their own."""
        steps = self.start(backend, cache, sampler, history, stats)
        if steps is None:
            yield from plain_decoding(backend, cache, logits, sampler, history, stats)
            return
        clock, forward = self.clock, backend.forward
        try:
            steps.choose(logits)
            yield from steps.deliver(steps.commit())
            while True:
                feed, _ = steps.plan()
                started = clock()
                logits = forward(feed, cache, all_logits=len(feed) > 1)
                steps.choose(logits)
                produced = steps.commit()
                self.record_pass(len(feed), clock() - started)
                yield from steps.deliver(produced)
        finally:
            steps.close()


class DraftingSteps:
    """One generation's speculative state, advanced one forward pass at a time by whoever
    runs the passes (`SpeculativeDecoding.__call__` alone, the engine's batch scheduler
    together with other requests): `plan` the pending token and its drafts, `choose` from
    that pass's logits (sampling only, nothing else changes the backend), `commit` (cut
    the rejected drafts off the cache; the tokens to hand out), `deliver` them counting
    what the consumer took, `close` to leave the cache as plain decoding would."""

    def __init__(self, producer: SpeculativeDecoding, backend: Backend, cache: Cache, sampler: Sampler,
                 history: list[int], stats: GenerationStats):
        self.backend, self.cache, self.sampler, self.history, self.stats = backend, cache, sampler, history, stats
        self.policy = producer.policy
        self.policy.record_forward(len(history), None)  # this sequence's prompt pass, not timed
        self.draft_max = producer.draft_max
        self.n_prompt = len(history)
        self.drafter = producer.drafter_factory(history)
        budget = backend.n_ctx + 1 - self.n_prompt  # what the consumer takes at most
        if producer.max_new_tokens is not None:
            budget = min(budget, producer.max_new_tokens)
        self.budget = budget
        self.drafting = True
        self.produced = 0  # tokens handed to the consumer
        self.pending: int | None = None  # chosen, handed out, not yet fed
        self._draft = None  # the Draft behind `_drafted`
        self._drafted: tuple[int, ...] = ()  # drafts fed after the pending token in this pass
        self._chosen: tuple[list[ProducedToken], int, object] | None = None

    def plan(self, n_tokens: int = 1, others: float = 0.0, room: int | None = None) -> tuple[tuple[int, ...], float]:
        """(tokens to feed next: the pending one and the drafts the policy chose, the
        tokens this pass is expected to yield). `n_tokens`: tokens of the pass counting
        this pending one but no draft of it; `others`: tokens the pass yields for other
        sequences; `room`: how many more tokens the pass takes."""
        alone = n_tokens == 1 and not others
        if alone and self.policy.quiet():  # drafting is off: nothing to look up
            self._draft, self._drafted = None, ()
            return (self.pending,), 1.0
        base = len(self.cache.tokens)  # == len(history) - 1: all but the pending token
        # Room for the pending token and k drafts in the context, and no draft the
        # consumer could not take (the last draft's successor comes free).
        k_max = min(self.draft_max, self.backend.n_ctx - base - 1, self.budget - self.produced - 1) if self.drafting else 0
        if room is not None:
            k_max = min(k_max, room)
        if k_max > 0 and not alone and self.policy.batch_quiet(n_tokens, others, k_max):
            k_max = 0  # no draft pays in this batch: nothing to look up either
        draft = self.drafter.propose(k_max) if k_max > 0 else None
        k = self.policy.choose(draft, k_max, n_tokens, others) if draft is not None else 0
        self._draft, self._drafted = draft, (draft.tokens[:k] if k else ())
        self.stats.draft_tokens += k
        expected = self.policy.expected_tokens(draft, k) if k else 1.0
        return (self.pending, *self._drafted), expected

    def quiet_steps(self) -> int:
        """For a sequence decoding alone: how many steps from now need nothing of this
        producer (drafting is off, no probe due). The caller may run them as plain
        decoding (each token sampled, appended to the history and handed out), then must
        call `resume` before the next `plan` or `close`."""
        return self.policy.quiet_steps() if self.drafting else 0

    def resume(self, unused: int = 0) -> None:
        """After steps run as plain decoding: take in the tokens they added to the
        history; `unused`: of the quiet steps counted, those not run (the request ended)."""
        history = self.history
        new = history[self.n_prompt + self.produced:]
        append = self.drafter.append
        for token in new:
            append(token)
        self.produced += len(new)
        if new:
            self.pending = new[-1]
        if unused:
            self.policy.unquiet(unused)

    def choose(self, logits: Logits) -> None:
        """The token at every position of the pass that fed the planned tokens (or, before
        the first plan, of the prompt's last position), as plain decoding would choose it."""
        sampler, history = self.sampler, self.history
        if self._drafted:
            self._chosen = verify_draft(logits, self._drafted, sampler, history, self.drafter)
        else:
            self._chosen = ([], sampler.sample_row(logits, -1, history), sampler.last_logprob)

    def commit(self) -> list[ProducedToken]:
        """Cut what the last `choose` rejected off the cache; the accepted drafts and the
        next pending token, in order, to hand to the consumer through `deliver`."""
        confirmed, token, logprob = self._chosen
        self._chosen = None
        if self._drafted:
            self.drafting = cut_back(self.backend, self.cache, self.history)
            self.policy.record_verification(self._draft.match_length, len(self._drafted), len(confirmed))
            self._drafted = ()
        self.history.append(token)
        self.drafter.append(token)
        self.pending = token
        confirmed.append(ProducedToken(token, False, logprob))
        return confirmed

    def deliver(self, produced: list[ProducedToken]) -> Iterator[ProducedToken]:
        for token in produced:
            self.produced += 1
            yield token

    def close(self) -> None:
        """Everything handed out but the last token stays cached, as plain decoding leaves it."""
        settle(self.backend, self.cache, self.history, self.n_prompt + max(0, self.produced - 1))


def verify_draft(logits: Logits, drafted: Sequence[int], sampler: Sampler, history: list[int],
                 drafter: Drafter) -> tuple[list[ProducedToken], int, object]:
    """Choose the token at every verified position as plain decoding would, accepting
    drafts while they agree; append the accepted ones to `history` and the drafter.
    Returns (the accepted drafts, the next pending token, its logprob). Every token the
    sampler picks here is one that will be yielded, in order, so a stateful output
    constraint advances exactly as in plain decoding."""
    confirmed = []
    if sampler.plain_greedy:  # one argmax per row, no row copied to the host
        targets = logits.argmax()
        while len(confirmed) < len(drafted) and targets[len(confirmed)] == drafted[len(confirmed)]:
            confirmed.append(ProducedToken(drafted[len(confirmed)], True))
        for t in confirmed:
            history.append(t.token)
            drafter.append(t.token)
        return confirmed, int(targets[len(confirmed)]), None
    for i, d in enumerate(drafted):
        target = sampler.sample_row(logits, i, history)
        if target != d:
            return confirmed, target, sampler.last_logprob
        confirmed.append(ProducedToken(d, True, sampler.last_logprob))
        history.append(d)
        drafter.append(d)
    return confirmed, sampler.sample_row(logits, len(drafted), history), sampler.last_logprob


def cut_back(backend: Backend, cache: Cache, confirmed: list[int]) -> bool:
    """Cut the rejected drafts off `cache` so it holds exactly `confirmed`. Where the
    cache's capability forbids the cut (a sliding window already dropped keys the shorter
    cache needs), refill it from empty instead and return False: stop drafting."""
    n = len(confirmed)
    if len(cache.tokens) <= n:
        return True
    if backend.cache_capability(cache).allows(n):
        backend.trim(cache, n)
        return True
    backend.trim(cache, 0)
    prefill(backend, cache, confirmed, lambda: False)
    return False


def settle(backend: Backend, cache: Cache, confirmed: list[int], n_keep: int) -> None:
    """At the end of a generation: cut `cache` back to its first `n_keep` tokens where
    allowed. Where not, tokens the model confirmed may stay (their keys are exact), but
    a cache holding anything else (a draft not yet checked) is emptied."""
    tokens = cache.tokens
    if len(tokens) <= n_keep:
        return
    if backend.cache_capability(cache).allows(n_keep):
        backend.trim(cache, n_keep)
    elif tokens != confirmed[: len(tokens)]:
        backend.trim(cache, 0)
