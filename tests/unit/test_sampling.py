"""Each sampler's effect on a known distribution, and seeded determinism."""

import numpy as np
import pytest

from localllm.engine.sampling import Sampler
from localllm.types import SamplingParams

# A known distribution over 6 tokens: probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04.
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
LOGITS = np.log(PROBS).astype(np.float32)


def dist(**kw):
    params = SamplingParams(**({"top_k": 0, "top_p": 1.0, "min_p": 0.0, "temperature": 1.0} | kw))
    return Sampler(params, LOGITS.size).distribution(LOGITS, [])


def test_plain_temperature_one_keeps_the_distribution():
    np.testing.assert_allclose(dist(), PROBS, rtol=1e-5)


def test_top_k_keeps_k_tokens_renormalised():
    d = dist(top_k=2)
    np.testing.assert_allclose(d, [0.4 / 0.65, 0.25 / 0.65, 0, 0, 0, 0], rtol=1e-5)


def test_top_p_keeps_the_smallest_set_reaching_p():
    # 0.4 + 0.25 = 0.65 < 0.7 <= 0.8: three tokens.
    assert np.count_nonzero(dist(top_p=0.7)) == 3
    assert np.count_nonzero(dist(top_p=0.35)) == 1


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    # 0.3 * 0.4 = 0.12: keeps 0.4, 0.25, 0.15.
    d = dist(min_p=0.3)
    assert np.count_nonzero(d) == 3
    np.testing.assert_allclose(d[:3], PROBS[:3] / PROBS[:3].sum(), rtol=1e-5)


def test_low_temperature_sharpens_and_high_flattens():
    cold, hot = dist(temperature=0.5), dist(temperature=2.0)
    assert cold[0] > PROBS[0] > hot[0]
    np.testing.assert_allclose(cold, PROBS**2 / (PROBS**2).sum(), rtol=1e-5)


def test_greedy_is_argmax():
    s = Sampler(SamplingParams(temperature=0), LOGITS.size)
    assert s.sample(LOGITS, []) == 0


def test_logit_bias_can_force_or_ban_a_token():
    forced = Sampler(SamplingParams(temperature=0, logit_bias={4: 100.0}), LOGITS.size)
    assert forced.sample(LOGITS, []) == 4
    banned = Sampler(SamplingParams(temperature=0, logit_bias={0: -1e9}), LOGITS.size)
    assert banned.sample(LOGITS, []) == 1


def test_repeat_penalty_pushes_recent_tokens_down():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5), 3)
    assert s.sample(logits, [0]) == 1  # 2.0 / 1.5 < 1.9
    d = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1, min_p=0, repeat_penalty=2.0), 3).distribution(logits, [2])
    # A negative logit is multiplied: -1.0 becomes -2.0.
    np.testing.assert_allclose(d, np.exp([2.0, 1.9, -2.0]) / np.exp([2.0, 1.9, -2.0]).sum(), rtol=1e-5)


def test_presence_and_frequency_penalties_subtract_per_occurrence():
    logits = np.zeros(3, dtype=np.float32)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1, min_p=0, presence_penalty=0.5, frequency_penalty=0.25)
    d = Sampler(params, 3).distribution(logits, [1, 1, 2])
    want = np.exp([0.0, -(0.5 + 2 * 0.25), -(0.5 + 0.25)])
    np.testing.assert_allclose(d, want / want.sum(), rtol=1e-5)


def test_repeat_window_only_looks_back_repeat_last_n():
    logits = np.array([2.0, 1.9], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5, repeat_last_n=2), 2)
    assert s.sample(logits, [0, 1, 1]) == 0  # token 0 is outside the window


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_seed_same_draws(seed):
    params = SamplingParams(seed=seed, top_k=0, top_p=1.0, min_p=0.0)
    s1, s2 = Sampler(params, 6), Sampler(params, 6)
    draws1 = [s1.sample(LOGITS, []) for _ in range(50)]
    draws2 = [s2.sample(LOGITS, []) for _ in range(50)]
    assert draws1 == draws2
    assert len(set(draws1)) > 1


def test_draws_follow_the_distribution():
    s = Sampler(SamplingParams(seed=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0), 6)
    counts = np.bincount([s.sample(LOGITS, []) for _ in range(20000)], minlength=6) / 20000
    np.testing.assert_allclose(counts, PROBS, atol=0.015)


def test_draws_never_leave_the_kept_set():
    s = Sampler(SamplingParams(seed=0, top_k=2, top_p=1.0, min_p=0.0, temperature=5.0), 6)
    assert {s.sample(LOGITS, []) for _ in range(500)} == {0, 1}
