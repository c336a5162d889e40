"""Speculation under an output constraint and with logprobs: every verified position is
picked through the sampler in order, so the constraint's state and each token's logprob
are what plain decoding gives."""

from __future__ import annotations

import pytest

from localllm.engine.constraint import compiler_for
from localllm.engine.generate import generate, plain_decoding
from localllm.types import GenerationRequest, OutputConstraint, SamplingParams
from tests.speculative.helpers import always_drafting

PROMPT = "Tim had a red ball. He liked to play with his red ball. One day, Tim"
# Text the model would write anyway, repeated: drafts get accepted inside the constraint.
REGEX = OutputConstraint("regex", r"( [a-z]+){4,30}\.")


def run(backend, producer, sampling, constraint=None, logprobs=None):
    cache = backend.new_cache()
    request = GenerationRequest(tuple(backend.vocabulary.encode(PROMPT, add_bos=True)), sampling, max_tokens=40,
                                constraint=constraint, logprobs=logprobs)
    chunks = list(generate(backend, cache, request, producer=producer))
    cache.close()
    return [c for c in chunks if c.token is not None], chunks[-1].stats


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0), SamplingParams(temperature=0.9, seed=5)],
                         ids=["greedy", "sampled"])
def test_constrained_output_is_the_same_with_speculation(stories_llamacpp, sampling):
    compiler_for(stories_llamacpp.vocabulary).check(REGEX)
    plain, _ = run(stories_llamacpp, plain_decoding, sampling, REGEX)
    spec, stats = run(stories_llamacpp, always_drafting(6, 2), sampling, REGEX)
    assert [c.token for c in spec] == [c.token for c in plain]
    assert stats.draft_tokens > 0


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0), SamplingParams(temperature=0.9, seed=5)],
                         ids=["greedy", "sampled"])
def test_logprobs_are_the_same_with_speculation(stories_llamacpp, sampling):
    plain, _ = run(stories_llamacpp, plain_decoding, sampling, logprobs=3)
    spec, stats = run(stories_llamacpp, always_drafting(6, 2), sampling, logprobs=3)
    assert [c.token for c in spec] == [c.token for c in plain]
    assert stats.accepted_tokens > 0
    for a, b in zip(spec, plain):
        assert a.logprob.token == b.logprob.token == a.token
        # A batched pass rounds differently (stories260K's logits measured up to 3e-3 apart).
        assert a.logprob.logprob == pytest.approx(b.logprob.logprob, abs=1e-2)
        assert [t for t, _ in a.logprob.top] == [t for t, _ in b.logprob.top]
