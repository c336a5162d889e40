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
from localllm.engine.generate import ProducedToken, plain_decoding, prefill
from localllm.engine.sampling import Sampler
from localllm.speculative.drafter import Drafter, DrafterFactory
from localllm.types import GenerationStats


class SpeculativeDecoding:
    """A `TokenProducer`: draft with `drafter_factory`, verify, let `policy` (adaptive or
    always) choose how many drafted tokens each step verifies."""

    def __init__(self, drafter_factory: DrafterFactory, policy, draft_max: int,
                 max_new_tokens: int | None = None, clock=time.perf_counter):
        self.drafter_factory = drafter_factory
        self.policy = policy
        self.draft_max = draft_max
        self.max_new_tokens = max_new_tokens
        self.clock = clock

    def __call__(self, backend: Backend, cache: Cache, logits: Logits, sampler: Sampler,
                 history: list[int], stats: GenerationStats) -> Iterator[ProducedToken]:
        if not backend.cache_capability(cache).trimmable:  # rejected drafts could not be undone
            yield from plain_decoding(backend, cache, logits, sampler, history, stats)
            return
        n_prompt = len(history)
        drafter = self.drafter_factory(history)
        budget = backend.n_ctx + 1 - n_prompt  # what the consumer takes at most
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        policy, clock, forward = self.policy, self.clock, backend.forward
        drafting = True
        produced = 0
        token = sampler.sample_row(logits, -1, history)
        logprob = sampler.last_logprob
        try:
            while True:
                history.append(token)
                drafter.append(token)
                produced += 1
                yield ProducedToken(token, False, logprob)
                base = len(cache.tokens)  # == len(history) - 1: all but the pending token
                # Room for the pending token and k drafts in the context, and no draft the
                # consumer could not take (the last draft's successor comes free).
                k_max = min(self.draft_max, backend.n_ctx - base - 1, budget - produced - 1) if drafting else 0
                draft = drafter.propose(k_max) if k_max > 0 else None
                k = policy.choose(draft, k_max) if draft is not None else 0
                started = clock()
                if k == 0:
                    logits = forward((token,), cache)
                    token = sampler.sample_row(logits, -1, history)
                    logprob = sampler.last_logprob
                    policy.record_forward(1, clock() - started)
                    continue
                drafted = draft.tokens[:k]
                stats.draft_tokens += k
                logits = forward((token, *drafted), cache, all_logits=True)
                confirmed, token, logprob = verify_draft(logits, drafted, sampler, history, drafter)
                drafting = cut_back(backend, cache, history)
                policy.record_forward(k + 1, clock() - started)
                policy.record_verification(draft.match_length, k, len(confirmed))
                for produced_token in confirmed:
                    produced += 1
                    yield produced_token
        finally:
            # Everything yielded but the last token, as plain decoding leaves it.
            settle(backend, cache, history, n_prompt + max(0, produced - 1))


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
