"""The backend protocol's rules, checked on every backend this machine can run (one
parametrised suite; `backend_kinds.BACKEND_KINDS` lists them): llama.cpp (one shared KV
buffer, and a KV stream per sequence as with --parallel 4), the MLX path and the numpy
reference.

- greedy decoding from BOS on stories260K writes llama2.c's own reference text;
- the logits of every fed position equal those of feeding the tokens one by one;
- a trimmed cache fed the rest again equals a fresh cache fed everything;
- a saved state restores into another cache and continues exactly; foreign bytes are refused;
- a prefix copied into another cache continues as a fresh prefill, independent of its source;
- the logits handle: `numpy(row)`, `numpy()` and `argmax()` agree;
- a forward past the context raises ContextOverflowError and leaves the cache as it was;
- the vocabulary it hands out encodes llama.cpp's Llama 2 test vectors to the expected ids
  and decodes them back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backend_kinds import BACKEND_KINDS  # noqa: E402

from conftest import require_model  # noqa: E402
from localllm.engine.generate import generate  # noqa: E402
from localllm.errors import ContextOverflowError  # noqa: E402
from localllm.types import GenerationRequest, SamplingParams  # noqa: E402
from tests.tokenizer.test_llama_vectors import read_vectors  # noqa: E402

CTX = 512
TEXT = "Once upon a time, there was a little dog named Max. He liked to run in the park with his ball."


@pytest.fixture(scope="module", params=BACKEND_KINDS, ids=[k.name for k in BACKEND_KINDS])
def kind(request):
    reason = request.param.unavailable()
    if reason is not None:
        pytest.skip(f"{request.param.name}: {reason}")
    return request.param


@pytest.fixture(scope="module")
def backend(kind):
    b = kind.load_stories(CTX)
    yield b
    b.close()


@pytest.fixture
def caches(backend):
    made = []

    def new():
        made.append(backend.new_cache())
        return made[-1]

    yield new
    for c in made:
        c.close()


def test_greedy_from_bos_writes_the_llama2c_reference(backend, caches):
    reference = require_model("stories260K/greedy-reference.txt").read_text().rstrip("\n")
    request = GenerationRequest((backend.vocabulary.bos_id,), SamplingParams(temperature=0), max_tokens=256)
    assert "".join(c.text for c in generate(backend, caches(), request)) == reference


def test_all_positions_equal_one_at_a_time(kind, backend, caches):
    tokens = backend.vocabulary.encode(TEXT)
    batch, step = caches(), caches()
    rows = backend.forward(tokens, batch, all_logits=True).numpy().copy()
    assert rows.shape == (len(tokens), backend.vocab_size)
    for i, t in enumerate(tokens):
        one = backend.forward([t], step).numpy(-1)
        np.testing.assert_allclose(one, rows[i], rtol=0, atol=kind.atol)
        assert np.argmax(one) == np.argmax(rows[i])
    assert batch.tokens == step.tokens == tokens


def test_trim_then_forward_equals_a_fresh_forward(kind, backend, caches):
    tokens = backend.vocabulary.encode(TEXT)
    fresh = backend.forward(tokens, caches(), all_logits=True).numpy().copy()
    cache = caches()
    backend.forward(tokens, cache)
    for n in (len(tokens) - 1, 17, 5, 1):  # each round ends with the cache holding all tokens
        assert backend.cache_capability(cache).allows(n)  # full attention: any cut
        backend.trim(cache, n)
        assert cache.tokens == tokens[:n]
        again = backend.forward(tokens[n:], cache, all_logits=True).numpy()
        np.testing.assert_allclose(again, fresh[n:], rtol=0, atol=kind.atol)
    backend.trim(cache, 0)
    assert cache.tokens == []


def test_a_saved_state_restores_and_continues(kind, backend, caches):
    tokens = backend.vocabulary.encode(TEXT)
    half = len(tokens) // 2
    src, dst = caches(), caches()
    backend.forward(tokens[:half], src)
    state = backend.save_state(src)
    assert backend.load_state(dst, tokens[:half], state)
    assert dst.tokens == tokens[:half]
    assert backend.cache_bytes(dst) == backend.cache_bytes(src) > 0
    want = backend.forward(tokens[half:], src, all_logits=True).numpy().copy()
    got = backend.forward(tokens[half:], dst, all_logits=True).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=kind.atol)
    # Bytes that are no saved state of this backend are refused, leaving the cache empty.
    assert not backend.load_state(dst, tokens[:3], b"not a saved state")
    assert dst.tokens == []


def test_a_copied_prefix_continues_as_a_fresh_prefill(kind, backend, caches):
    """`copy_prefix` (llama.cpp: cells shared in the KV buffer): the copy continues as a
    cache fed from empty, and each of the two then changes without touching the other."""
    tokens = backend.vocabulary.encode(TEXT)
    half = len(tokens) // 2
    fresh = backend.forward(tokens, caches(), all_logits=True).numpy().copy()
    src, dst = caches(), caches()
    backend.forward(tokens, src)
    backend.copy_prefix(src, dst, half)
    assert dst.tokens == tokens[:half] and src.tokens == tokens
    got = backend.forward(tokens[half:], dst, all_logits=True).numpy()
    np.testing.assert_allclose(got, fresh[half:], rtol=0, atol=kind.atol)
    backend.trim(src, 3)  # the source cut below the copy's prefix: the copy keeps its own
    backend.trim(dst, half)
    got = backend.forward(tokens[half:], dst, all_logits=True).numpy()
    np.testing.assert_allclose(got, fresh[half:], rtol=0, atol=kind.atol)
    got = backend.forward(tokens[3:], src, all_logits=True).numpy()
    np.testing.assert_allclose(got, fresh[3:], rtol=0, atol=kind.atol)
    backend.copy_prefix(src, dst, 0)
    assert dst.tokens == []


def test_the_logits_handle_agrees_with_itself(backend, caches):
    tokens = backend.vocabulary.encode(TEXT)
    logits = backend.forward(tokens, caches(), all_logits=True)
    rows = logits.numpy()
    assert logits.n_rows == len(tokens) and rows.dtype == np.float32
    assert list(logits.argmax()) == list(np.argmax(rows, axis=-1))
    np.testing.assert_array_equal(logits.numpy(-1), rows[-1])
    last = backend.forward(tokens[:4], caches())
    assert last.n_rows == 1 and last.numpy(-1).shape == (backend.vocab_size,)
    assert int(last.argmax()[-1]) == int(np.argmax(last.numpy(-1)))


def test_a_forward_past_the_context_changes_nothing(backend, caches):
    cache = caches()
    backend.forward([backend.vocabulary.bos_id] * 10, cache)
    with pytest.raises(ContextOverflowError) as e:
        backend.forward([7] * backend.n_ctx, cache)
    assert e.value.limit == backend.n_ctx and e.value.prompt_tokens == backend.n_ctx + 10
    assert len(cache.tokens) == 10


def test_the_vocabulary_round_trips_llama_cpp_vectors(kind):
    vocab = kind.llama2_vocabulary()
    vectors = read_vectors()
    wrong = [(text, ids) for text, ids in vectors if vocab.encode(text, add_bos=False) != ids]
    assert not wrong, wrong[:3]
    assert all(vocab.decode(vocab.encode(text, add_bos=False)) == text for text, _ in vectors)
    assert (vocab.bos_id, vocab.eos_id, vocab.add_bos, vocab.adds_space_prefix) == (1, 2, True, True)
