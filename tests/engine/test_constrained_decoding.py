"""Constrained decoding and logprobs in the engine, on the real SmolLM2 and stories260K
models through llama.cpp: schema-valid replies at temperature 1 for 20 seeds, greedy
replies that follow the mask, logprobs equal to a direct log-softmax of the logits."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from localllm.engine import Engine
from localllm.engine.constraint import compiler_for
from localllm.engine.sampling import Sampler
from localllm.errors import UserError
from localllm.tokenizer.chat import ChatPrompter
from localllm.types import GenerationRequest, Message, OutputConstraint, SamplingParams

# Three schemas of the issue: nested objects, enums, arrays with bounds (strings bounded
# so that a reply at temperature 1 ends well within max_tokens).
SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 24},
                               "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False,
            },
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "address", "age"], "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "status": {"enum": ["open", "closed", "pending"]},
            "priority": {"type": "integer", "enum": [1, 2, 3]},
            "kind": {"const": "ticket"},
        },
        "required": ["status", "priority", "kind"], "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100},
                       "minItems": 2, "maxItems": 4},
        },
        "required": ["tags", "scores"], "additionalProperties": False,
    },
}


def _settings(ctx: int, parallel: int = 1):
    from localllm.config import Settings

    return Settings(home=Path("/nonexistent"), cache_dir=Path("/nonexistent"), ctx_size=ctx, threads=1, parallel=parallel)


@pytest.fixture(scope="module")
def smollm(smollm_path):
    from localllm.backend.select import load_backend

    # Four sequences decode together: the seeded runs below are submitted at once.
    with Engine(load_backend(str(smollm_path), _settings(1024, parallel=4)), parallel=4) as engine:
        yield engine


def _chat(engine, text: str) -> tuple[int, ...]:
    vocab = engine.backend.vocabulary
    return tuple(ChatPrompter(vocab, vocab.chat_template).encode([Message("user", text)]))


def _submit(engine, prompt, constraint, **sampling):
    return engine.submit(GenerationRequest(prompt, SamplingParams(**sampling), max_tokens=300, constraint=constraint))


def _run(engine, prompt, constraint, **sampling):
    handle = _submit(engine, prompt, constraint, **sampling)
    return handle.text(), handle.finish_reason


def _seeds_validate(engine, name, seeds):
    schema = SCHEMAS[name]
    prompt = _chat(engine, f"Describe a {name} record as JSON.")
    constraint = OutputConstraint("json_schema", json.dumps(schema))
    # All seeds at once: the engine decodes them in one batch, each with its own mask.
    handles = [_submit(engine, prompt, constraint, temperature=1.0, seed=seed, top_k=0, top_p=1.0, min_p=0.0) for seed in seeds]
    for seed, handle in zip(seeds, handles):
        text = handle.text()
        assert handle.finish_reason == "stop", (seed, text)
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_seeds_at_temperature_one_validate(smollm, name):
    _seeds_validate(smollm, name, range(3))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_twenty_seeds_at_temperature_one_validate(smollm, name):
    _seeds_validate(smollm, name, range(3, 20))


def test_json_object_replies_parse(smollm):
    prompt = _chat(smollm, "Give me a JSON object about a cat.")
    handles = [_submit(smollm, prompt, OutputConstraint("json_object"), temperature=1.0, seed=seed) for seed in range(5)]
    for handle in handles:
        text, finish = handle.text(), handle.finish_reason
        if finish == "stop":
            assert isinstance(json.loads(text), dict), text
        else:  # the reply says why it stopped; what came so far is a JSON object's start
            assert finish == "length" and text.startswith("{")


def test_greedy_follows_the_mask_and_unconstrained_greedy_is_unchanged(smollm):
    prompt = _chat(smollm, "What is the capital of France?")
    free, _ = _run(smollm, prompt, None, temperature=0)
    assert not free.lstrip().startswith("{")  # the model would not answer in JSON by itself
    regex, finish = _run(smollm, prompt, OutputConstraint("regex", "(Paris|Lyon|Nice)\\."), temperature=0)
    assert finish == "stop" and regex in ("Paris.", "Lyon.", "Nice.")
    text, finish = _run(smollm, prompt, OutputConstraint("json_schema", json.dumps(SCHEMAS["enums"])), temperature=0)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMAS["enums"])


def test_lark_grammar_names_a_special_token(smollm):
    # A Lark grammar may name a control token by id (<[n]>): here the end of the turn.
    end = smollm.backend.vocabulary.special_tokens["<|im_end|>"]
    prompt = _chat(smollm, "Say yes or no.")
    text, finish = _run(smollm, prompt, OutputConstraint("lark", f'start: ("yes" | "no") <[{end}]>'), temperature=0)
    assert finish == "stop" and text in ("yes", "no")


def test_a_length_limit_says_length(smollm):
    prompt = _chat(smollm, "JSON please.")
    handle = smollm.submit(GenerationRequest(prompt, SamplingParams(temperature=0), max_tokens=3,
                                             constraint=OutputConstraint("json_schema", json.dumps(SCHEMAS["nested"]))))
    text = handle.text()
    assert handle.finish_reason == "length" and text.startswith("{")


def test_bad_schemas_are_one_clear_error(smollm):
    compiler = compiler_for(smollm.backend.vocabulary)
    with pytest.raises(UserError, match="uniqueItems"):
        compiler.check(OutputConstraint("json_schema", '{"type": "array", "uniqueItems": true}'))
    with pytest.raises(UserError, match="not valid JSON"):
        compiler.check(OutputConstraint("json_schema", "{nope"))
    with pytest.raises(UserError, match="grammar"):
        compiler.check(OutputConstraint("lark", "start: ("))


def test_mask_matches_the_tokens_of_a_valid_instance(smollm):
    vocab = smollm.backend.vocabulary
    matcher = compiler_for(vocab).matcher(OutputConstraint("json_schema", json.dumps(SCHEMAS["enums"])))
    for token in vocab.encode('{"status": "open", "priority": 3, "kind": "ticket"}', add_bos=False):
        mask = matcher.mask()
        assert mask[token] and matcher.allows(token)
        matcher.accept(token)
    mask = matcher.mask()
    assert set(np.flatnonzero(mask)) <= set(vocab.end_of_turn_ids) and matcher.done
    matcher.rollback(1)  # a verifier that undoes its last token sees the position before it
    assert not matcher.done and matcher.mask().sum() >= 1


def test_sampler_masks_every_position_a_verifier_samples(smollm):
    """Speculative verification samples positions in order through one sampler: each
    position gets the mask after the tokens accepted before it."""
    vocab = smollm.backend.vocabulary
    matcher = compiler_for(vocab).matcher(OutputConstraint("regex", "ab+c"))
    sampler = Sampler(SamplingParams(temperature=0), smollm.backend.vocab_size, constraint=matcher)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):  # logits that would never pick a grammar token by themselves
        out.append(sampler.sample(rng.normal(size=smollm.backend.vocab_size).astype(np.float32), out))
    text = "".join(vocab.token_bytes(t).decode() for t in out)
    assert text.startswith("a") and set(text[1:]) <= {"b", "c"}


@pytest.fixture(scope="module")
def stories(stories_path):
    from localllm.backend.select import load_backend

    with Engine(load_backend(str(stories_path), _settings(512))) as engine:
        yield engine


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def test_greedy_logprobs_equal_a_direct_log_softmax(stories):
    backend = stories.backend
    prompt = tuple(backend.vocabulary.encode("Once upon a time"))
    chunks = [c for c in stories.submit(GenerationRequest(prompt, SamplingParams(temperature=0), max_tokens=12,
                                                          logprobs=5)) if c.token is not None]
    tokens = [c.token for c in chunks]
    cache = backend.new_cache()  # the same steps the generation took: the prompt, then one token each
    rows = [backend.forward(prompt, cache).numpy(-1).copy()]
    rows += [backend.forward((t,), cache).numpy(-1).copy() for t in tokens[:-1]]
    for chunk, row in zip(chunks, rows):
        direct = _log_softmax(row)
        assert chunk.logprob.token == chunk.token == int(np.argmax(row))
        assert chunk.logprob.logprob == pytest.approx(direct[chunk.token], abs=1e-5)
        best = np.argsort(-direct)[:5]
        assert [t for t, _ in chunk.logprob.top] == list(best)
        assert [lp for _, lp in chunk.logprob.top] == pytest.approx(list(direct[best]), abs=1e-5)
    backend.trim(cache, 0)


def test_sampled_logprobs_are_of_the_tempered_distribution(stories):
    prompt = tuple(stories.backend.vocabulary.encode("Once upon a time"))
    chunks = [c for c in stories.submit(GenerationRequest(prompt, SamplingParams(temperature=0.7, seed=3),
                                                          max_tokens=8, logprobs=0)) if c.token is not None]
    for c in chunks:
        assert c.logprob.token == c.token and c.logprob.top == () and c.logprob.logprob <= 0.0


def test_a_sentencepiece_vocabulary_with_a_space_prefix(stories):
    """Forced text ('{"' after a key) is split without SentencePiece's leading space:
    the engine must not stop with a grammar error on stories260K's vocabulary."""
    prompt = tuple(stories.backend.vocabulary.encode("Once upon a time"))
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "kind": {"enum": ["cat", "dog"]}},
              "required": ["name", "kind"], "additionalProperties": False}
    for sampling in (SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=4)):
        handle = stories.submit(GenerationRequest(prompt, sampling, max_tokens=60,
                                                  constraint=OutputConstraint("json_schema", json.dumps(schema))))
        text = handle.text()
        assert handle.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), schema)
