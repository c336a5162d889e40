"""Greedy decoding with speculation gives plain decoding's tokens, on every backend.

stories260K is F32: a batched forward pass agrees with single steps to ~1e-5, so the
tokens must be identical. SmolLM2 is Q4_1: llama.cpp quantizes activations to 8 bits per
block of 32 before each quantized matmul, and a float difference of 1e-6 between a batch
and a single step can flip one rounding there, which moved single logits by up to ~0.8
in our measurements. There, every token speculation chose is checked against the plain
single-step logits of its own history: the argmax, or within LOGIT_TOLERANCE of it.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.speculative.helpers import GREEDY, always_drafting, run

from localllm.engine.generate import plain_decoding
from localllm.speculative.adaptive import AdaptiveDraftPolicy
from localllm.speculative.prompt_lookup import prompt_lookup_factory
from localllm.speculative.verify import SpeculativeDecoding
from localllm.types import Message

STORY_PROMPTS = [
    "Once upon a time",
    "Lily and Tom went to the park. Lily and Tom",
    "The cat sat on the mat. The dog sat on the mat. The cat",
    "One day, a little girl named Lily found a needle in her room.",
    "Tim had a red ball. He liked to play with his red ball. One day, Tim",
    "Sue said, \"I want to play!\" Mom said, \"You can play.\" Sue said,",
    "There was a big tree. The tree was very big. The bird sat in the big tree.",
    "Ben and Mia",
    "The sun was hot. The sun was hot and the",
    "A dog, a cat and a bird were friends. The dog, the cat and the bird",
    "Max liked to run. Max ran and ran. Max",
    "Once there was a king. The king had a crown.",
]


@pytest.mark.parametrize("draft_max,ngram", [(8, 3), (3, 1), (5, 2)])
def test_stories_greedy_tokens_identical_llamacpp(stories_llamacpp, draft_max, ngram):
    vocab = stories_llamacpp.vocabulary
    accepted = 0
    for text in STORY_PROMPTS:
        prompt = vocab.encode(text, add_bos=True)
        plain, _, _ = run(stories_llamacpp, prompt, plain_decoding, max_tokens=120)
        spec, chunks, _ = run(stories_llamacpp, prompt, always_drafting(draft_max, ngram), max_tokens=120)
        assert spec == plain, text
        accepted += chunks[-1].stats.accepted_tokens
        assert sum(c.from_draft for c in chunks) == chunks[-1].stats.accepted_tokens
    assert accepted > 100  # the drafts were really used


def test_stories_greedy_tokens_identical_on_every_backend(any_backend):
    vocab = any_backend.vocabulary
    drafts = 0
    for text in STORY_PROMPTS[:4]:
        prompt = vocab.encode(text, add_bos=True)
        plain, _, _ = run(any_backend, prompt, plain_decoding, max_tokens=60)
        spec, chunks, _ = run(any_backend, prompt, always_drafting(6, 2), max_tokens=60)
        assert spec == plain, text
        drafts += chunks[-1].stats.accepted_tokens
    assert drafts > 0


def test_auto_gives_the_same_tokens_and_learns(stories_llamacpp):
    policy = AdaptiveDraftPolicy()
    vocab = stories_llamacpp.vocabulary
    for text in STORY_PROMPTS[:6]:
        prompt = vocab.encode(text, add_bos=True)
        plain, _, _ = run(stories_llamacpp, prompt, plain_decoding, max_tokens=80)
        auto, _, _ = run(stories_llamacpp, prompt, SpeculativeDecoding(prompt_lookup_factory(3), policy, 8), max_tokens=80)
        assert auto == plain
    assert policy.costs.measured(1) is not None


LOGIT_TOLERANCE = 1.0  # batch-vs-single logit differences measured on SmolLM2 Q4_1: up to 0.8

SMOLLM_TASKS = [
    "Repeat this sentence exactly: The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Rename the function add to plus and output all of the code:\n\ndef add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Quote the first sentence of this passage: Rivers carry water from the mountains to the sea. Along the way they shape valleys.",
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
]


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def smollm(request, smollm_path):
    from pathlib import Path

    from localllm.config import Settings
    from localllm.runtime import load_model

    if request.param == "mlx":
        pytest.importorskip("mlx.core")
    model = load_model(str(smollm_path), Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"),
                                                  backend=request.param, ctx_size=1024, threads=1,
                                                  prefix_cache=False))
    yield model
    model.close()


def plain_logits_along(backend, prompt, tokens) -> np.ndarray:
    """The logits plain decoding computes before each of `tokens` (one step at a time)."""
    cache = backend.new_cache()
    rows = [backend.forward(prompt, cache).numpy(-1).copy()]
    for t in tokens[:-1]:
        rows.append(backend.forward([t], cache).numpy(-1).copy())
    cache.close()
    return np.stack(rows)


@pytest.mark.slow
def test_smollm_greedy_follows_plain_logits(smollm):
    """Each token is plain decoding's argmax for its history, or a near-tie within the
    batch-vs-single noise; near-ties are rare. Prints how many replies were identical."""
    backend = smollm.engine.backend
    stop_ids = smollm.prompter.stop_token_ids

    # MLX's CPU build (what runs off Apple Silicon) is ~10x slower here: the two grounded
    # tasks only, where drafts are accepted and so batched verification is really checked.
    tasks, n, least = (SMOLLM_TASKS, 60, 60) if smollm.backend_name != "mlx" else (SMOLLM_TASKS[:2], 32, 30)

    def check():
        exact, gaps, accepted = 0, [], 0
        for task in tasks:
            prompt = smollm.chat_tokens([Message("user", task)])
            # Each run alone in the context: llama.cpp's sums depend on how many cells the
            # context's other sequences hold, so a live second cache changes the logits too.
            spec, chunks, cache = run(backend, prompt, always_drafting(8, 3), max_tokens=n, stop_token_ids=stop_ids)
            cache.close()
            accepted += chunks[-1].stats.accepted_tokens
            # Plain greedy decoding is the argmax of these single-step logits at each step,
            # so a reply whose every token is that argmax is plain decoding's reply.
            logits = plain_logits_along(backend, prompt, spec)
            reply_gaps = [float(row.max() - row[token]) for row, token in zip(logits, spec)]
            exact += max(reply_gaps) == 0
            gaps += reply_gaps
        return exact, np.array(gaps), accepted

    exact, gaps, accepted = smollm.engine.call(lambda _: check())
    near_ties = gaps[gaps > 0]
    print(f"{smollm.backend_name}: {exact}/{len(tasks)} replies identical to plain decoding; "
          f"{len(gaps)} tokens, {len(near_ties)} not the plain argmax (gaps {np.round(near_ties, 3).tolist()})")
    assert len(gaps) > least and accepted > 5
    assert gaps.max() <= LOGIT_TOLERANCE
    assert len(near_ties) <= 0.05 * len(gaps)
