"""With sampling, speculation keeps the target's distribution (chi-squared, fixed seeds),
and a seeded request gives the same tokens with and without it.

The distribution test uses a tiny random llama with a 6-token vocabulary on the numpy
reference backend, so the exact distribution of the first tokens can be computed by
enumeration. A fixed drafter always proposes the same two tokens (accepted sometimes,
rejected sometimes). Sampling runs at temperature 1 with no truncation (the whole
distribution is in play) and with a repeat penalty and a logit bias that change the
distribution per position, so a verification that used the wrong row or the wrong
history would be seen.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.speculative.helpers import always_drafting, run

from localllm.engine.generate import plain_decoding
from localllm.engine.sampling import Sampler
from localllm.speculative.adaptive import AdaptiveDraftPolicy, AlwaysDraftPolicy
from localllm.speculative.drafter import Draft
from localllm.speculative.verify import SpeculativeDecoding
from localllm.types import GenerationStats, SamplingParams

VOCAB = 6
PROMPT = [0, 3, 1, 4]
DRAFT = (2, 5)
SAMPLES = 3000


def write_tiny_llama(path: Path, seed: int = 3) -> Path:
    import gguf

    dim, ffn, heads, layers = 16, 32, 2, 2
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-vocab-6")
    w.add_context_length(64)
    w.add_embedding_length(dim)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_dimension_count(dim // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_token_merges([])

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(np.float32)

    w.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, dim)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(dim, dtype=np.float32))
    w.add_tensor("output.weight", mat(VOCAB, dim, 1.2))  # logits spread over ~2 units
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(dim, dtype=np.float32))
        for name, rows in (("attn_q", dim), ("attn_k", dim), ("attn_v", dim), ("attn_output", dim)):
            w.add_tensor(p + name + ".weight", mat(rows, dim, 2.0))
        w.add_tensor(p + "ffn_norm.weight", np.ones(dim, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(ffn, dim))
        w.add_tensor(p + "ffn_up.weight", mat(ffn, dim))
        w.add_tensor(p + "ffn_down.weight", mat(dim, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.backends.reference_numpy import NumpyReferenceBackend

    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-vocab-6.gguf")
    return NumpyReferenceBackend(path, vocabulary=None, ctx_size=64)  # never detokenizes here


class FixedDrafter:
    """Always proposes DRAFT."""

    def append(self, token):
        pass

    def propose(self, k):
        return Draft(DRAFT[:k], 1)


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-squared(dof): the regularized upper incomplete gamma Q(dof/2, x/2)."""
    a, z = dof / 2.0, x / 2.0
    if z < a + 1:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        n = a
        while term > total * 1e-15:
            n += 1
            term *= z / n
            total += term
        return 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a))
    # continued fraction (Lentz) for Q
    tiny = 1e-300
    b, c, d = z + 1 - a, 1 / tiny, 1 / (z + 1 - a)
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h * math.exp(-z + a * math.log(z) - math.lgamma(a))


def exact_distribution(backend, params: SamplingParams, n: int) -> dict[tuple, float]:
    """P(first n tokens) under plain sampling, by enumeration."""
    sampler = Sampler(params, backend.vocab_size)
    out = {}

    def walk(prefix, prob):
        if len(prefix) == n:
            out[tuple(prefix)] = prob
            return
        cache = backend.new_cache()
        history = PROMPT + prefix
        row = backend.forward(history, cache).numpy(-1)
        dist = sampler.distribution(row, history)
        for t in range(VOCAB):
            if dist[t] > 0:
                walk(prefix + [t], prob * dist[t])

    walk([], 1.0)
    return out


def first_tokens(backend, producer, params: SamplingParams, seed: int, n: int) -> tuple:
    cache = backend.new_cache()
    logits = backend.forward(PROMPT, cache)
    sampler = Sampler(params, backend.vocab_size)
    sampler.rng = np.random.default_rng(seed)
    tokens = producer(backend, cache, logits, sampler, list(PROMPT), GenerationStats())
    try:
        return tuple(next(tokens).token for _ in range(n))
    finally:
        tokens.close()


def chi_squared(counts: Counter, expected: dict, samples: int) -> tuple[float, int]:
    """The statistic and degrees of freedom, cells with fewer than 5 expected merged."""
    stat, dof, rest_o, rest_e = 0.0, 0, 0, 0.0
    for cell, p in expected.items():
        e = p * samples
        if e < 5:
            rest_o, rest_e = rest_o + counts.get(cell, 0), rest_e + e
            continue
        stat += (counts.get(cell, 0) - e) ** 2 / e
        dof += 1
    if rest_e > 0:
        stat += (rest_o - rest_e) ** 2 / rest_e
        dof += 1
    return stat, dof - 1


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.6, repeat_last_n=8,
                   logit_bias={2: 0.7, 4: -0.5}),
], ids=["plain", "penalties-and-bias"])
def test_first_tokens_follow_the_target_distribution(tiny, params):
    n = 3  # the first comes from the prompt's logits; the next two through verification
    expected = exact_distribution(tiny, params, n)
    producer = SpeculativeDecoding(lambda context: FixedDrafter(), AlwaysDraftPolicy(AdaptiveDraftPolicy()), 2)
    stats_before = GenerationStats()
    counts = Counter(first_tokens(tiny, producer, params, seed, n) for seed in range(SAMPLES))
    stat, dof = chi_squared(counts, expected, SAMPLES)
    assert chi2_sf(stat, dof) > 0.001, (stat, dof)
    # Both ways a draft can go were exercised: accepted and rejected.
    seconds = [t[1:] for t in counts.elements()]
    assert any(s[0] == DRAFT[0] for s in seconds) and any(s[0] != DRAFT[0] for s in seconds)
    del stats_before


def test_the_chi_squared_check_can_fail(tiny):
    """The same check rejects a sampler that ignores the repeat penalty at verified positions."""
    params = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.6, repeat_last_n=8)
    expected = exact_distribution(tiny, params, 3)
    wrong = SamplingParams(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0)
    counts = Counter(first_tokens(tiny, plain_decoding, wrong, seed, 3) for seed in range(SAMPLES))
    stat, dof = chi_squared(counts, expected, SAMPLES)
    assert chi2_sf(stat, dof) < 1e-6


def test_chi2_sf_known_values():
    assert chi2_sf(3.841, 1) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(18.307, 10) == pytest.approx(0.05, abs=1e-3)
    assert chi2_sf(2.0, 10) == pytest.approx(0.99634, abs=1e-4)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, seed=7),
    SamplingParams(temperature=1.1, top_k=20, top_p=0.9, seed=11, repeat_penalty=1.15, frequency_penalty=0.2,
                   logit_bias={13: 2.0}),
], ids=["default", "penalties"])
def test_seeded_sampling_gives_the_same_tokens_with_speculation(any_backend, params):
    vocab = any_backend.vocabulary
    accepted = 0
    for text in ("Lily and Tom went to the park. Lily and Tom", "The cat sat on the mat. The dog sat on the mat."):
        prompt = vocab.encode(text, add_bos=True)
        plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=60, sampling=params)
        spec, chunks, _ = run(any_backend, prompt, always_drafting(6, 2), max_tokens=60, sampling=params)
        assert spec == plain
        accepted += chunks[-1].stats.accepted_tokens
    assert accepted > 0
