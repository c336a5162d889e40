"""Speculative drafts in the shared batch (engine/batching.py with a `SteppedProducer`):
a drafting request's pending token and drafts are one item of the same `forward_batch` as
the other requests' tokens, verified, accepted and cut back exactly as alone
(speculative/verify.py). On the real llama.cpp backend: greedy text equals plain decoding
for every request, a rejected draft is cut off while the others go on, a cancellation in
the middle of an accepted draft leaves the cache as plain decoding would. What ran
together is read from the recorded forward passes, never from timing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tests.speculative.helpers import ScriptedDrafter

from localllm.backend.select import load_backend
from localllm.config import Settings
from localllm.engine import Engine
from localllm.kvcache import KVCacheManager
from localllm.speculative.adaptive import AdaptiveDraftPolicy, AlwaysDraftPolicy
from localllm.speculative.drafter import Draft
from localllm.speculative.verify import SpeculativeDecoding
from localllm.types import DraftParams, GenerationRequest, SamplingParams

REPETITIVE = [
    "Tim had a red ball. He liked to play with his red ball. One day, Tim",
    "The cat sat on the mat. The dog sat on the mat. The cat",
    "Lily and Tom went to the park. Lily and Tom",
    "Max liked to run. Max ran and ran. Max",
]


class PassRecorder:
    """The real backend; each `forward_batch` recorded as [(cache, tokens fed, all_logits)]."""

    def __init__(self, backend):
        self._backend = backend
        self.passes: list[list[tuple[object, int, bool]]] = []

    def forward_batch(self, items):
        self.passes.append([(item.cache, len(item.tokens), item.all_logits) for item in items])
        return self._backend.forward_batch(items)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def _load(path: Path, parallel: int, flash_attn: str = "on"):
    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=1024, threads=1,
                        flash_attn=flash_attn, parallel=parallel)
    return load_backend(str(path), settings)


def _request(prompt, max_tokens: int, draft: str = "none", **kw) -> GenerationRequest:
    return GenerationRequest(tuple(prompt), SamplingParams(temperature=0), max_tokens=max_tokens,
                             draft=DraftParams(draft), **kw)


def _tokens(handle) -> list[int]:
    return [c.token for c in handle if c.token is not None]


def _drafts_shared_a_pass(passes) -> bool:
    """Some pass held a multi-token all-logits item (a verification) and another item."""
    return any(len(p) >= 2 and any(n > 1 and all_logits for _, n, all_logits in p) for p in passes)


@pytest.fixture(scope="module")
def stories_alone(stories_path):
    """Plain greedy decoding, one request at a time: the reference."""
    with Engine(_load(stories_path, 1), parallel=1) as engine:
        yield engine


def _plain(engine, prompt, max_tokens, **kw) -> list[int]:
    return _tokens(engine.submit(_request(prompt, max_tokens, **kw)))


def test_drafting_requests_in_one_batch_give_plain_greedy_text(stories_path, stories_alone):
    """Four requests drafting by prompt lookup (always verified) decode together: each
    gives plain decoding's tokens exactly (stories260K is F32), and the drafts really
    were verified in passes shared with the other requests."""
    vocab = stories_alone.backend.vocabulary
    prompts = [vocab.encode(text, add_bos=True) for text in REPETITIVE]
    alone = [_plain(stories_alone, p, 80, ignore_eos=True) for p in prompts]
    backend = PassRecorder(_load(stories_path, 4))
    with Engine(backend, KVCacheManager(backend), parallel=4) as engine:
        handles = [engine.submit(_request(p, 80, "prompt-lookup", ignore_eos=True)) for p in prompts]
        together = [_tokens(h) for h in handles]
    assert together == alone
    assert sum(h.stats.accepted_tokens for h in handles) > 40
    assert all(h.stats.draft_tokens >= h.stats.accepted_tokens for h in handles)
    assert _drafts_shared_a_pass(backend.passes)


def test_auto_drafts_in_the_batch_give_plain_greedy_text(stories_path, stories_alone):
    """`--draft auto` (the default) with several requests: the adaptive policy decides per
    step from the batch's costs; whatever it decides, the text is plain decoding's."""
    vocab = stories_alone.backend.vocabulary
    prompts = [vocab.encode(text, add_bos=True) for text in REPETITIVE[:3]]
    alone = [_plain(stories_alone, p, 60) for p in prompts]
    backend = _load(stories_path, 3)
    with Engine(backend, KVCacheManager(backend), parallel=3) as engine:
        for _ in range(2):  # the second round runs with the costs the first one measured
            handles = [engine.submit(_request(p, 60, "auto")) for p in prompts]
            assert [_tokens(h) for h in handles] == alone
        assert engine.draft_policy.batch_costs.measured(3) is not None  # batched passes were timed


def _scripted_engine(backend, answer, n_prompt, wrong=frozenset(), on_propose=None, parallel=2):
    """An engine whose drafting requests (draft "prompt-lookup") propose `answer` (with
    wrong tokens at `wrong` positions) and check on every proposal that their cache holds
    exactly the confirmed context but its pending token."""
    made: list[ScriptedDrafter] = []
    holder: dict = {}

    def cache_of():
        return next(r.cache for r in holder["engine"].scheduler.running if r.request.draft.mode != "none")

    class Checked(ScriptedDrafter):
        def propose(self, k):
            if on_propose is not None:
                on_propose(len(self.context) - self.n_prompt)
            return super().propose(k)

    def factory(context):
        made.append(Checked(context, answer, n_prompt, wrong=wrong, wrong_token=answer[0] + 1, cache_of=cache_of))
        return made[-1]

    def producer_for(request):
        if request.draft.mode == "none":
            return None
        return SpeculativeDecoding(factory, AlwaysDraftPolicy(AdaptiveDraftPolicy()), 6, request.max_tokens)

    engine = Engine(backend, KVCacheManager(backend), parallel=parallel, producer_for=producer_for)
    holder["engine"] = engine
    return engine, made


def test_rejected_drafts_are_cut_back_while_the_other_sequence_decodes(stories_path, stories_alone):
    vocab = stories_alone.backend.vocabulary
    drafting_prompt = vocab.encode(REPETITIVE[0], add_bos=True)
    plain_prompt = vocab.encode("Once upon a time", add_bos=True)
    answer = _plain(stories_alone, drafting_prompt, 40, ignore_eos=True)
    other = _plain(stories_alone, plain_prompt, 60, ignore_eos=True)
    backend = PassRecorder(_load(stories_path, 2))
    engine, drafters = _scripted_engine(backend, answer, len(drafting_prompt), wrong={3, 4, 11, 20, 21, 22, 35})
    with engine:
        plain = engine.submit(_request(plain_prompt, 60, ignore_eos=True))
        drafted = engine.submit(_request(drafting_prompt, 40, "prompt-lookup", ignore_eos=True))
        assert _tokens(drafted) == answer
        assert _tokens(plain) == other
    stats = drafted.stats
    assert drafters[0].proposals > 5  # its cache was checked after every verification
    assert stats.draft_tokens > stats.accepted_tokens > 0  # some drafts were rejected
    assert _drafts_shared_a_pass(backend.passes)


def test_cancelled_in_the_middle_of_an_accepted_draft(stories_path, stories_alone):
    """Cancelled while a whole draft is being verified in the batch: the request stops
    after the first token of that step, its cache keeps only what was handed out but the
    last token, and the other request finishes with its plain text."""
    vocab = stories_alone.backend.vocabulary
    drafting_prompt = vocab.encode(REPETITIVE[1], add_bos=True)
    plain_prompt = vocab.encode("Once upon a time", add_bos=True)
    answer = _plain(stories_alone, drafting_prompt, 40, ignore_eos=True)
    other = _plain(stories_alone, plain_prompt, 60, ignore_eos=True)
    box: dict = {}
    submitted = threading.Event()

    def on_propose(position):
        if position >= 10 and "at" not in box:  # the next pass verifies answer[at:at+6], all right
            submitted.wait()
            box["handle"].cancel()
            box["at"] = position

    backend = PassRecorder(_load(stories_path, 2))
    engine, _ = _scripted_engine(backend, answer, len(drafting_prompt), on_propose=on_propose)
    with engine:
        plain = engine.submit(_request(plain_prompt, 60, ignore_eos=True))
        box["handle"] = drafted = engine.submit(_request(drafting_prompt, 40, "prompt-lookup", ignore_eos=True))
        submitted.set()
        got = _tokens(drafted)
        assert _tokens(plain) == other
        manager = engine.caches
        kept = [p.tokens for p in manager.parked] + [manager.working.tokens]
    assert drafted.finish_reason == "cancelled"
    at = box["at"]
    assert got == answer[:at + 1]
    # Parked while the other request held the working cache, or the working cache since:
    # either way exactly the prompt and what was handed out but the last token.
    assert drafting_prompt + answer[:at] in kept
    assert not any(t[:len(drafting_prompt)] == drafting_prompt and len(t) > len(drafting_prompt) + at for t in kept)


def test_max_tokens_inside_an_accepted_draft_in_the_batch(stories_path, stories_alone):
    vocab = stories_alone.backend.vocabulary
    drafting_prompt = vocab.encode(REPETITIVE[2], add_bos=True)
    plain_prompt = vocab.encode("Once upon a time", add_bos=True)
    answer = _plain(stories_alone, drafting_prompt, 30, ignore_eos=True)
    backend = _load(stories_path, 2)
    engine, _ = _scripted_engine(backend, answer, len(drafting_prompt))
    with engine:
        for limit in (1, 2, 5, 9):
            plain = engine.submit(_request(plain_prompt, 30, ignore_eos=True))
            drafted = engine.submit(_request(drafting_prompt, limit, "prompt-lookup", ignore_eos=True))
            assert _tokens(drafted) == answer[:limit]
            assert drafted.finish_reason == "length"
            plain.text()


@pytest.mark.slow
def test_smollm_drafts_in_the_batch_follow_plain_logits(smollm_path):
    """SmolLM2 Q4_1, five chat requests drafting, four at a time,: every token is plain decoding's
    argmax for its history, or a near-tie within the batch-vs-single rounding the
    speculative tests allow (tests/speculative/test_greedy_equality.py)."""
    from tests.speculative.test_greedy_equality import LOGIT_TOLERANCE, SMOLLM_TASKS, plain_logits_along

    from localllm.runtime import load_model
    from localllm.types import Message

    settings = Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=1024, threads=1,
                        flash_attn="on", parallel=4, prefix_cache=False)
    model = load_model(str(smollm_path), settings)
    try:
        prompts = [model.chat_tokens([Message("user", task)]) for task in SMOLLM_TASKS]
        stops = model.prompter.stop_token_ids
        handles = [model.engine.submit(_request(p, 60, "prompt-lookup", stop_token_ids=frozenset(stops)))
                   for p in prompts]
        replies = [_tokens(h) for h in handles]
        assert sum(h.stats.accepted_tokens for h in handles) > 5
    finally:
        model.close()
    single = _load(smollm_path, 1, "on")
    try:
        gaps = np.concatenate([[float(row.max() - row[t]) for row, t in zip(plain_logits_along(single, p, r), r)]
                               for p, r in zip(prompts, replies)])
    finally:
        single.close()
    near_ties = gaps[gaps > 0]
    print(f"{len(gaps)} tokens, {len(near_ties)} not the plain argmax (gaps {np.round(near_ties, 3).tolist()})")
    assert len(gaps) > 100
    assert gaps.max() <= LOGIT_TOLERANCE
    assert len(near_ties) <= 0.05 * len(gaps)


class _OffPolicy(AdaptiveDraftPolicy):
    """The adaptive policy with fixed costs where drafting is off at the prior acceptance
    (a probe costs a whole plain step, long drafts could pay): the engine's timings are
    not recorded, so what it decides does not depend on this machine's speed."""

    def __init__(self):
        super().__init__()
        for n, seconds in ((1, 1.0), (2, 2.0), (9, 3.0), (1, 1.0)):
            super().record_forward(n, seconds)

    def record_forward(self, n_tokens, seconds, sequences=1):
        if n_tokens == 1 and seconds is not None:
            self.timed_plain = getattr(self, "timed_plain", 0) + 1

    def quiet(self):  # asked by a drafting step that has nothing to propose
        self.asked = getattr(self, "asked", 0) + 1
        return super().quiet()


def test_auto_with_drafting_off_decodes_plainly_between_probes(stories_path, stories_alone):
    """Decoding alone with drafting off, the steps between probes run as plain decoding
    (no proposal, no drafting step, but timed), and at each probe the drafter has caught up with the
    whole confirmed context and the cache holds it but the pending token (the scripted
    drafter checks both); the text is plain decoding's and the cache ends as plain
    decoding leaves it, though the request ends in the middle of such a stretch."""
    vocab = stories_alone.backend.vocabulary
    prompt = vocab.encode(REPETITIVE[0], add_bos=True)
    answer = _plain(stories_alone, prompt, 60, ignore_eos=True)
    policy = _OffPolicy()
    assert policy.is_off()
    made: list[ScriptedDrafter] = []
    holder: dict = {}

    def factory(context):  # every draft wrong: probes fail, drafting stays off
        made.append(ScriptedDrafter(context, answer, len(prompt), wrong=set(range(60)), wrong_token=answer[0] + 1,
                                    cache_of=lambda: holder["engine"].scheduler.running[0].cache))
        return made[-1]

    backend = PassRecorder(_load(stories_path, 1))
    engine = Engine(backend, KVCacheManager(backend), parallel=1,
                    producer_for=lambda request: SpeculativeDecoding(factory, policy, 6, request.max_tokens))
    holder["engine"] = engine
    with engine:
        cache = backend.new_cache()
        handle = engine.submit(_request(prompt, 60, "auto", ignore_eos=True), cache)
        assert _tokens(handle) == answer
        assert cache.tokens == list(prompt) + answer[:-1]
        cache.close()
    probes = [p for p in backend.passes[1:] if p[0][1] > 1]  # a probe verifies the whole draft
    assert 2 <= made[0].proposals == len(probes) <= 6  # 4, 8, 16, 32 steps apart
    assert handle.stats.draft_tokens == sum(n - 1 for (_, n, _), in probes)
    assert all(all_logits for (_, _, all_logits), in probes)
    assert len(backend.passes) == 1 + 59  # the prompt, then one pass per token: no more
    assert policy.asked <= 2 * len(probes) + 2  # the other steps never asked the producer
    # The plain steps were timed all the same (c(1) at the depth decoding is at).
    assert policy.timed_plain >= 59 - 2 * len(probes)


class _FixedCostsPolicy(AdaptiveDraftPolicy):
    """The adaptive policy at fixed costs, drafts of match length 3 always right: alone a
    pass of n tokens costs 1 + 0.5 (n - 1) (right drafts pay: 9 tokens for 5 steps'
    time), four sequences decoding together cost 1.0 a pass. The engine's own timings
    are only listed (tokens, whether timed, sequences), so what the policy decides does
    not depend on this machine's speed. One table for both would draft 4+ tokens in the
    batch (c(4) = 2.5 against c(8) = 4.5 for 8 tokens instead of 4)."""

    def __init__(self):
        super().__init__()
        for n in range(1, 10):
            for _ in range(3):
                super().record_forward(n, 1.0 + 0.5 * (n - 1))
        for _ in range(3):
            super().record_forward(4, 1.0, 4)
        for _ in range(20):
            self.record_verification(3, 8, 8)
        self.timed: list[tuple[int, bool, int]] = []

    def record_forward(self, n_tokens, seconds, sequences=1):
        self.timed.append((n_tokens, seconds is not None, sequences))


def test_auto_drafts_nothing_in_a_batch_where_a_token_more_costs_what_it_yields(stories_path, stories_alone):
    """Four requests with drafts that are always right, `--draft auto` at costs where a
    draft pays alone but not in a pass of four: the shared passes verify no draft (the
    batch's costs are its own, not those of passes alone) and ask the drafters for none,
    the scheduler times them with their sequence count, and the text is plain decoding's."""
    vocab = stories_alone.backend.vocabulary
    prompts = [vocab.encode(text, add_bos=True) for text in REPETITIVE]
    answers = [_plain(stories_alone, p, 40, ignore_eos=True) for p in prompts]
    policy = _FixedCostsPolicy()
    assert policy.choose(Draft(tuple(range(8)), 3), 8) == 8  # alone it drafts

    made: list[ScriptedDrafter] = []

    def factory(context):  # the request's own answer, always right
        i = next(i for i, p in enumerate(prompts) if list(context) == p)
        made.append(ScriptedDrafter(context, answers[i], len(prompts[i])))
        return made[-1]

    backend = PassRecorder(_load(stories_path, 4))
    engine = Engine(backend, KVCacheManager(backend), parallel=4,
                    producer_for=lambda request: SpeculativeDecoding(factory, policy, 8, request.max_tokens))
    with engine:
        gate = threading.Event()
        held = threading.Thread(target=engine.call, args=(lambda _: gate.wait(),))
        held.start()  # the engine waits in this job while all four are submitted: they start together
        handles = [engine.submit(_request(p, 40, "auto", ignore_eos=True)) for p in prompts]
        gate.set()
        held.join()
        assert [_tokens(h) for h in handles] == answers

    def decoding(item):  # a prompt chunk is the only item of many tokens without all logits
        _, n, all_logits = item
        return n == 1 or all_logits

    shared = [p for p in backend.passes if sum(map(decoding, p)) >= 2]
    assert len(shared) >= 30
    assert not any(all_logits for p in shared for _, _, all_logits in p)
    assert (4, True, 4) in policy.timed
    assert sum(h.stats.draft_tokens for h in handles) == 0
    assert len(made) == 4 and sum(d.proposals for d in made) == 0  # nothing was even looked up
