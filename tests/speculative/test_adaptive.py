"""The adaptive policy's decisions from given costs and outcomes (no clock involved)."""

from __future__ import annotations

import pytest

from localllm.speculative.adaptive import (
    PROBE_FIRST, PROBE_MOST, PROBE_RARE, PROBE_SHARE, REFRESH_EVERY, AdaptiveDraftPolicy, ForwardCosts, expected_tokens,
)
from localllm.speculative.drafter import Draft

DRAFT8 = Draft(tuple(range(8)), 3)


def policy_with_costs(costs: dict[int, float]) -> AdaptiveDraftPolicy:
    policy = AdaptiveDraftPolicy()
    for n, seconds in costs.items():
        for _ in range(3):
            policy.record_forward(n, seconds)
    return policy


def record_batched(policy: AdaptiveDraftPolicy, costs: dict[int, float], sequences: int = 4) -> None:
    for n, seconds in costs.items():
        for _ in range(3):
            policy.record_forward(n, seconds, sequences)


def test_batched_passes_are_costed_apart_from_passes_alone():
    """Alone, a pass of n tokens of one long sequence; in the batch, n short sequences of
    one token each: SmolLM2-135M on 2 threads measured 39 ms for the first at n = 4 and 25
    ms for the second, +7 ms a token for both. In one table the batch read c(4) from the
    long sequence's passes and c(5) from its own, a draft looked nearly free, and 4 streams
    decoded 6% slower with drafts than without. Apart, the batch's c(4 + k) is its own
    c(4) plus what k more tokens cost alone: no draft, even one that is always right, so
    the batch needs no proposal and no probe (`batch_quiet`)."""
    draft = Draft(tuple(range(8)), 3)
    policy = policy_with_costs({n: 17.6 + 7.0 * (n - 1) for n in range(1, 10)})
    for _ in range(20):
        policy.record_verification(3, 8, 8)  # drafts of this match length are always right
    assert policy.choose(draft, 8) == 8  # alone they pay
    assert policy.batch_quiet(4, 3.0, 8)  # nothing measured in a batch yet
    record_batched(policy, {4: 25.4})
    assert policy.batch_costs.measured(4) == 25.4 and policy.costs.measured(4) == pytest.approx(38.6)
    assert policy.batch_quiet(4, 3.0, 8)
    assert [policy.choose(draft, 8, n_tokens=4, others=3.0) for _ in range(2 * PROBE_MOST)] == [0] * 2 * PROBE_MOST
    # Measured cheap in the batch (a pass of 5 costs what one of 4 does), the draft pays there.
    record_batched(policy, {5: 25.4})
    assert not policy.batch_quiet(4, 3.0, 8)
    assert policy.choose(draft, 1, n_tokens=4, others=3.0) == 1
    # Where right drafts would pay but these are not right often enough, the batch does
    # not probe (alone, one in PROBE_FIRST steps would): a probe there slows every sequence.
    cheap = policy_with_costs({n: 17.6 + 2.0 * (n - 1) for n in range(1, 10)})
    record_batched(cheap, {4: 25.4})
    assert not cheap.batch_quiet(4, 3.0, 8)
    unsure = Draft(draft.tokens, 1)  # match length 1: the prior's acceptance, 0.3
    assert [cheap.choose(unsure, 8, n_tokens=4, others=3.0) for _ in range(2 * PROBE_MOST)] == [0] * 2 * PROBE_MOST


def test_in_a_batch_extra_tokens_cost_at_least_the_slope_of_the_drafting_passes():
    """While drafts pay alone, plain steps are rare and c(1) dates from another load:
    SmolLM2 read c(1) 22 ms, c(2) 26 ms (4 ms a token) where its passes of 2 to 9 tokens grew
    9 ms a token. Batched passes then take the steeper slope: an always-right draft does not
    pay in a pass of four short sequences (25.4 ms) at 9 ms a token, and nothing is proposed."""
    policy = policy_with_costs({1: 22.0, 2: 26.0, 9: 88.7})
    record_batched(policy, {4: 25.4})
    assert policy.batch_quiet(4, 3.0, 8)
    # Where the passes alone grow as c(2) - c(1) says, the same draft pays in the batch.
    even = policy_with_costs({1: 22.0, 2: 26.0, 9: 54.0})
    record_batched(even, {4: 25.4})
    assert not even.batch_quiet(4, 3.0, 8)


def test_expected_tokens():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(1.0, 4) == pytest.approx(expected_tokens(0.99, 4))


def test_costs_interpolate_and_extrapolate():
    costs = ForwardCosts()
    assert costs.estimate(3) is None  # nothing until a 1-token pass is measured
    costs.record(1, 1.0)
    assert costs.estimate(5) == pytest.approx(2.0)  # the prior slope, 0.25 per token
    costs.record(5, 3.0)
    assert costs.estimate(3) == pytest.approx(2.0)  # between measured sizes
    assert costs.estimate(9) == pytest.approx(5.0)  # the measured slope (0.5) beats the prior
    assert costs.ratio(5) == pytest.approx(3.0)
    for s in (10.0, 10.0, 10.0):
        costs.record(1, s)
    assert costs.measured(1) == pytest.approx(10.0)  # the median of recent timings


def test_no_draft_until_a_plain_step_was_timed():
    assert AdaptiveDraftPolicy().choose(DRAFT8, 8) == 0


def test_cheap_batches_and_good_acceptance_draft_long():
    policy = policy_with_costs({1: 1.0, 9: 1.2})
    for _ in range(5):
        policy.record_verification(3, 8, 8)
    assert policy.choose(DRAFT8, 8) == 8
    assert policy.choose(DRAFT8, 3) == 3  # never past k_max


def test_steep_costs_draft_short_or_not_at_all():
    steep = {n: float(n) for n in range(1, 10)}  # a k+1 token pass costs k+1 plain steps
    policy = policy_with_costs(steep)
    for _ in range(10):
        policy.record_verification(3, 4, 4)
    assert policy.choose(DRAFT8, 8) == 0  # even 99% acceptance cannot pay for linear cost
    policy = policy_with_costs({1: 1.0, 2: 1.3, 3: 1.6, 5: 2.2, 9: 3.9})
    for _ in range(10):
        policy.record_verification(3, 4, 4)
    assert 2 <= policy.choose(DRAFT8, 8) <= 8


def test_the_prior_tries_where_batches_are_cheap_and_waits_for_probes_where_not():
    assert policy_with_costs({n: 1.0 + 0.05 * (n - 1) for n in range(1, 10)}).choose(DRAFT8, 8) > 0
    steep = policy_with_costs({n: 1.0 + 0.3 * (n - 1) for n in range(1, 10)})
    choices = [steep.choose(DRAFT8, 8) for _ in range(PROBE_FIRST)]
    assert choices == [0] * (PROBE_FIRST - 1) + [8]  # a probe verifies the whole draft
    steep.record_verification(3, 8, 8)  # the probe was right: draft
    assert steep.choose(DRAFT8, 8) > 0


def test_turns_off_on_rejections_probes_and_turns_back_on():
    policy = policy_with_costs({n: 1.0 + 0.3 * (n - 1) for n in range(1, 10)})
    for _ in range(3):
        policy.record_verification(3, 4, 4)
    assert policy.choose(DRAFT8, 8) > 0
    for _ in range(20):
        policy.record_verification(3, 4, 0)
    choices = [policy.choose(DRAFT8, 8) for _ in range(PROBE_FIRST)]
    assert choices[:-1] == [0] * (PROBE_FIRST - 1) and choices[-1] == 8  # off, then one probe
    policy.record_verification(3, 8, 0)  # the probe fails: the interval doubles
    choices = [policy.choose(DRAFT8, 8) for _ in range(2 * PROBE_FIRST)]
    assert choices.count(8) == 1 and choices[-1] == 8
    for _ in range(50):  # probes keep failing: the interval stops growing at PROBE_MOST
        policy.record_verification(3, 1, 0)
    # (a probe of 9 tokens costs 2.4 steps: 240 keeps probes at PROBE_SHARE of the time)
    assert policy._stats(3).probe_interval == policy._probe_most() == int(2.4 / PROBE_SHARE) > PROBE_MOST
    for _ in range(15):  # the text turned repetitive: probes succeed, drafting comes back
        policy.record_verification(3, 1, 1)
    assert policy.choose(DRAFT8, 8) > 1


def test_acceptance_is_kept_per_match_length():
    policy = policy_with_costs({n: 1.0 + 0.3 * (n - 1) for n in range(1, 10)})
    for _ in range(20):
        policy.record_verification(1, 4, 0)
        policy.record_verification(3, 4, 4)
    assert policy.acceptance(1) < 0.1 < 0.9 < policy.acceptance(3)
    assert policy.choose(Draft(DRAFT8.tokens, 1), 8) == 0
    assert policy.choose(DRAFT8, 8) > 0


def test_in_a_batch_a_draft_must_pay_for_what_it_costs_the_others():
    """Alone, a cheap draft pays (1.3 tokens for 1.1x the pass); in a pass with three other
    decoding sequences the same draft would slow all four for 0.3 extra tokens: no draft.
    With n_tokens 1 and no others the batch rule is the single-sequence one."""
    one = Draft((7,), 1)
    policy = policy_with_costs({n: 1.0 + 0.1 * (n - 1) for n in range(1, 10)})
    assert policy.choose(one, 1) == 1
    assert policy.choose(one, 1, 1, 0.0) == 1
    assert policy.choose(one, 1, n_tokens=4, others=3.0) == 0  # no batched pass measured yet
    record_batched(policy, {4: 1.3})  # a token more: what it adds alone (0.1)
    assert policy.choose(one, 1, n_tokens=4, others=3.0) == 0
    # Where a wider pass costs next to nothing more (a large batch, a prompt chunk in it),
    # drafting pays in the batch too.
    flat = policy_with_costs({1: 1.0})
    record_batched(flat, {4: 2.0, 5: 2.0})
    assert flat.choose(one, 1, n_tokens=4, others=3.0) == 1
    assert flat.expected_tokens(one, 1) == pytest.approx(expected_tokens(flat.acceptance(1), 1))


def test_a_longer_match_starts_from_what_the_shorter_one_learned():
    policy = policy_with_costs({n: 1.0 + 0.3 * (n - 1) for n in range(1, 10)})
    for _ in range(20):
        policy.record_verification(3, 8, 8)
    assert policy.acceptance(8) == pytest.approx(policy.acceptance(3))
    assert policy.acceptance(3) > 0.9
    assert policy.choose(Draft(DRAFT8.tokens, 8), 8) == 8  # a copy growing past 3 tokens keeps drafting
    for _ in range(20):
        policy.record_verification(1, 4, 0)
    assert policy.acceptance(2) == pytest.approx(0.3)  # never below the prior


def test_all_off_steps_skip_proposals_until_a_probe_whose_interval_grows_with_its_cost():
    """Where no match length's acceptance makes a draft pay, `quiet` says which steps need
    no proposal; the probes between them back off on failures, up to where they cost
    about PROBE_SHARE of the time, and a success does not bring them back quickly."""
    policy = policy_with_costs({1: 1.0, 2: 2.0, 9: 3.0})  # a probe costs a whole step, long drafts could pay
    assert policy.is_off()
    quiet = [policy.quiet() for _ in range(PROBE_FIRST)]
    assert quiet == [True] * (PROBE_FIRST - 1) + [False]  # the last one proposes: a probe
    assert policy.choose(DRAFT8, 8) == 8
    gaps = []
    for _ in range(10):
        policy.record_verification(3, 1, 0)
        gaps.append(policy._probe_gap)
    assert gaps[0] == 2 * PROBE_FIRST and gaps[-1] == int(2.0 / PROBE_SHARE) > PROBE_MOST  # a probe: c(9) = 3 steps
    policy.record_verification(3, 1, 1)
    assert policy._probe_gap == gaps[-1]
    skipped = 0
    while policy.quiet():
        skipped += 1
    assert skipped == gaps[-1] - 1


def test_quiet_only_while_all_is_off():
    policy = policy_with_costs({n: 1.0 + 0.3 * (n - 1) for n in range(1, 10)})
    for _ in range(5):
        policy.record_verification(8, 8, 8)  # long copies pay
    assert not policy.is_off()
    assert not any(policy.quiet() for _ in range(10))


def test_where_no_draft_can_pay_probes_only_re_measure():
    policy = policy_with_costs({1: 1.0, 2: 2.0, 3: 3.0, 5: 5.0, 9: 9.0})  # linear: even right drafts lose
    assert policy.is_off()
    policy.record_verification(3, 1, 1)  # a probe, right or not
    assert policy._probe_gap == PROBE_RARE


def test_quiet_steps_come_at_once_but_for_the_timed_one_before_a_probe():
    """A sequence decoding alone may run the quiet steps as plain decoding (the engine
    does, at plain decoding's cost); the one before the probe stays a step of its own, and
    the steps a request did not run carry over to the next one."""
    policy = policy_with_costs({1: 1.0, 2: 2.0, 9: 3.0})
    policy.record_forward(1, 1.0)  # the last pass timed was a plain one
    n = policy.quiet_steps()
    assert n == PROBE_FIRST - 2 and policy.quiet_steps() == 0
    assert policy.quiet() and not policy.quiet()  # the last quiet step, then the probe
    policy.unquiet(5)
    assert policy.quiet_steps() == 4


def test_hopeless_from_a_short_prompts_plain_steps_is_undone_by_plain_steps_timed_since():
    """c(1) timed on a short first request (11 ms), probes on a long one (29 ms): drafting
    looks hopeless and probes come once in PROBE_RARE steps. The plain steps timed since
    at the long depth (17 ms) undo that at the next re-derivation, and the quiet steps are
    handed out at most REFRESH_EVERY at a time so that it can take effect."""
    policy = policy_with_costs({1: 0.011, 2: 0.029})
    policy.record_forward(1, 0.011)
    policy.record_verification(3, 1, 1)  # a probe, right
    assert policy._probe_gap == PROBE_RARE
    n = policy.quiet_steps()
    assert n == REFRESH_EVERY
    for _ in range(n):
        policy.record_forward(1, 0.017)
    assert policy._probe_gap == policy._probe_most() < PROBE_RARE
    assert policy._quiet_left < policy._probe_gap


def test_the_plain_pass_after_a_larger_one_is_charged_to_the_larger_one():
    """llama.cpp builds its graph again after a pass of another shape: what the first plain
    pass after a verification costs over a steady one is the verification's cost."""
    costs = ForwardCosts()
    for _ in range(3):
        costs.record(1, 1.0)
    costs.record(3, 2.0)
    costs.record(1, 1.5)  # builds its graph again
    costs.record(1, 1.0)
    assert costs.measured(1) == pytest.approx(1.0) and costs.measured(3) == pytest.approx(2.5)
    policy = policy_with_costs({1: 1.0, 2: 2.0, 9: 3.0})
    policy.record_forward(2, 2.0)  # a probe: the next step is timed, not run quietly
    assert policy.quiet_steps() == 0
    policy.record_forward(1, 1.0)
    assert policy.quiet_steps() > 0


def test_a_probe_measures_the_pass_drafting_would_run_where_costs_grow_unevenly():
    """On an AVX-512 EPYC (2 threads) SmolLM2's 2-token pass cost 15 ms against 7.1 for
    one, its 9-token pass 34: extrapolated from c(2), no draft could pay, and 1-token
    probes kept it so while always drafting decoded the benchmark's copying stream 2x
    faster. A probe verifies the whole draft, and its pass's cost turns drafting on."""
    policy = policy_with_costs({1: 0.0071, 2: 0.015})
    assert policy.is_off() and policy._hopeless()
    choices = [policy.choose(DRAFT8, 8) for _ in range(PROBE_FIRST)]
    assert choices == [0] * (PROBE_FIRST - 1) + [8]
    policy.record_forward(9, 0.034)
    policy.record_verification(3, 8, 8)
    assert not policy.is_off() and policy._probe_gap < PROBE_RARE
    assert policy.choose(DRAFT8, 8) >= 4
