"""The KV-cache manager on the real stories260K model: turn reuse, shared prefixes,
byte budget, disk snapshots across processes, and the overflow policy."""

import json
import struct

import pytest

from conftest import run_cli
from localllm.config import load_settings
from localllm.kvcache.prefix import common_prefix_length
from localllm.errors import ContextOverflowError
from localllm.kvcache import KVCacheManager, OverflowPolicy, SnapshotStore, fit_messages
from localllm.kvcache.manager import FED_AT_LEAST
from localllm.kvcache.snapshots import MAGIC
from localllm.runtime import load_model
from localllm.types import GenerationRequest, Message, SamplingParams

GREEDY = SamplingParams(temperature=0)
USER_TURNS = [
    "Once upon a time there was a dog.", "The dog liked to run.", "One day it found a ball.",
    "It ran to the park.", "A bird sang in a tree.", "The dog barked at the bird.",
    "Lily came to the park.", "She threw the ball.", "The dog was happy.", "Then it was time to go home.",
]


def scripted_chat(model, max_tokens=20):
    """Ten turns; returns per turn (prompt tokens, generated tokens, stats)."""
    messages = [Message("system", "A story about a dog.")]
    turns = []
    for text in USER_TURNS:
        messages.append(Message("user", text))
        prompt, _ = model.fit_chat(messages, max_tokens)
        handle = model.chat(messages, GREEDY, max_tokens=max_tokens)
        generated, reply = [], []
        for chunk in handle:
            reply.append(chunk.text)
            if chunk.token is not None:
                generated.append(chunk.token)
        turns.append((prompt, generated, handle.stats))
        messages.append(Message("assistant", "".join(reply)))
    return turns


@pytest.fixture
def settings(isolated_home):
    return load_settings(ctx_size=1024)


def test_turn_ten_prefills_only_its_new_tokens(stories_path, settings):
    model = load_model(str(stories_path), settings)
    try:
        turns = scripted_chat(model)
    finally:
        model.close()
    prev_prompt, prev_generated, _ = turns[8]
    prompt, _, stats = turns[9]
    # The cache after turn 9 held its prompt and its reply (but the last token, never fed).
    held = prev_prompt + prev_generated[:-1]
    new_tokens = len(prompt) - common_prefix_length(held, prompt)
    assert stats.prompt_tokens - stats.cached_tokens == new_tokens
    print(f"turn 10: {len(prompt)} prompt tokens, {stats.cached_tokens} cached, {new_tokens} new")
    assert new_tokens < 40 < len(prompt)  # the new user message and the turn's seams, not the history
    assert stats.cached_tokens > 0.8 * stats.prompt_tokens


def test_greedy_output_is_identical_with_and_without_the_cache(stories_path, isolated_home):
    with_cache = load_model(str(stories_path), load_settings(ctx_size=1024))
    without = load_model(str(stories_path), load_settings(ctx_size=1024, prefix_cache=False))
    try:
        a, b = scripted_chat(with_cache), scripted_chat(without)
    finally:
        with_cache.close()
        without.close()
    assert [g for _, g, _ in a] == [g for _, g, _ in b]
    assert all(s.cached_tokens == 0 for _, _, s in b)
    assert sum(s.cached_tokens for _, _, s in a) > 0


@pytest.fixture(params=["stories_backend", "numpy_backend"], ids=["llamacpp", "numpy"])
def any_backend(request):
    """stories260K on llama.cpp and on the numpy reference: the manager's rules are the
    protocol's, whichever backend computes."""
    return request.getfixturevalue(request.param)


def test_shared_prefix_is_prefilled_once_and_the_other_conversation_parked(any_backend):
    b = any_backend
    manager = KVCacheManager(b)
    runner = _Runner(b, manager)
    system = b.vocabulary.encode("Once upon a time, in a big forest, there lived a wise old owl who loved to tell stories. " * 3)
    first = system + b.vocabulary.encode("The owl saw a fox that was very hungry and looked for food all day long in the snow. " * 2, add_bos=False)
    second = system + b.vocabulary.encode("A rabbit ran by the river and jumped over a log near the big old tree in the sun. " * 2, add_bos=False)
    try:
        assert runner.run(first).cached_tokens == 0
        s2 = runner.run(second)
        assert s2.cached_tokens == common_prefix_length(first, second) >= len(system) - 1
        assert runner.last_source == "working" and manager.stats.parks == 1
        s3 = runner.run(first)  # the first conversation was parked, not lost
        assert runner.last_source == "parked"
        assert s3.cached_tokens == len(first) - FED_AT_LEAST
        assert manager.stats.hits == 2 and manager.stats.hit_rate == pytest.approx(2 / 3)
        # Only the working cache lives in the KV buffer: decode attends over nothing else.
        assert len(manager.working.tokens) <= len(first) + 4
    finally:
        manager.close()


def test_eviction_respects_the_byte_budget(any_backend):
    b = any_backend
    budget = 150 * b.kv_bytes_per_token
    manager = KVCacheManager(b, budget_bytes=budget)
    runner = _Runner(b, manager)
    try:
        for word in ("cat", "dog", "bird", "fish", "frog"):
            runner.run(b.vocabulary.encode(f"The {word} " * 20))
            parked = sum(len(p.state) for p in manager.parked)
            assert parked <= budget
            assert manager.stats.bytes_held == parked + len(manager.working.tokens) * b.kv_bytes_per_token
        assert manager.stats.parks == 4 and manager.stats.evictions >= 2
    finally:
        manager.close()


def test_snapshot_survives_a_process_restart(stories_path, isolated_home):
    prompt = "Once upon a time, there was a little girl named Lily who loved to play in the park. " * 12
    args = ("run", str(stories_path), "--temperature", "0", "--max-tokens", "5", "--stats", "json")
    first = run_cli(*args, input=prompt)
    second = run_cli(*args, input=prompt)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    s1 = json.loads(first.stderr.strip().splitlines()[-1])
    s2 = json.loads(second.stderr.strip().splitlines()[-1])
    assert s1["prompt_tokens"] > 256 and s1["cached_tokens"] == 0
    assert s2["cached_tokens"] >= s2["prompt_tokens"] - FED_AT_LEAST  # loaded from disk, not prefilled
    assert first.stdout == second.stdout
    snapshots = list((isolated_home / "cache" / "kv-snapshots").rglob("*.kvsnap"))
    assert len(snapshots) == 1  # the second run's longer snapshot replaced the first


def test_snapshot_store_cap_and_unreadable_files(tmp_path):
    store = SnapshotStore(tmp_path, "model", cap_bytes=3000)
    store.save([1, 2, 3], b"x" * 1000)
    store.save([1, 2, 3, 4], b"y" * 1000)  # extends the first: replaces it
    assert store.find([1, 2, 3, 4, 5]) == ([1, 2, 3, 4], b"y" * 1000, 4)
    assert len(list((tmp_path / "model").glob("*.kvsnap"))) == 1
    store.save([9, 9], b"z" * 1000)
    store.save([8, 8], b"w" * 1000)
    assert store.total_bytes() <= 3000
    (tmp_path / "model" / "junk.kvsnap").write_bytes(b"not a snapshot")
    reopened = SnapshotStore(tmp_path, "model", cap_bytes=3000)
    assert not (tmp_path / "model" / "junk.kvsnap").exists()
    assert reopened.find([8, 8, 1]) == ([8, 8], b"w" * 1000, 2)


def test_a_snapshot_is_found_only_for_a_prefix_it_holds_exactly(tmp_path):
    """A state that can be cut back no further than 5 of its 6 tokens (a sliding window)
    serves prompts sharing 5 or 6 of them, not fewer."""
    store = SnapshotStore(tmp_path, "model")
    store.save([1, 2, 3, 4, 5, 6], b"s", min_tokens=5)
    assert store.find([1, 2, 3, 4, 5, 6, 7]).reusable == 6
    assert store.find([1, 2, 3, 4, 5, 6, 7], limit=5).reusable == 5
    assert store.find([1, 2, 3, 4, 5, 6], limit=5).reusable == 5
    assert store.find([1, 2, 3, 4, 9]) is None
    store.save([1, 2, 3], b"t")  # full attention: any prefix
    assert store.find([1, 2, 3, 4, 9]).tokens == [1, 2, 3]
    # A longer snapshot that cannot serve the shorter prefixes does not replace it.
    store.save([1, 2, 3, 4, 5, 6, 7, 8], b"u", min_tokens=7)
    assert store.find([1, 2, 9]).tokens == [1, 2, 3]
    # Files from before the field: only their whole length counts.
    header = json.dumps({"tokens": [7, 7, 7]}).encode()
    (tmp_path / "model" / "old.kvsnap").write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + b"v")
    reopened = SnapshotStore(tmp_path, "model")
    assert reopened.find([7, 7, 7, 1]).reusable == 3
    assert reopened.find([7, 7, 1]) is None


def test_overflow_refuses_or_drops_oldest_turns_but_keeps_the_system_prompt():
    def encode(messages):
        return [0] * sum(10 for _ in messages)

    messages = [Message("system", "s")] + [Message(r, "x") for r in ["user", "assistant"] * 3] + [Message("user", "q")]
    with pytest.raises(ContextOverflowError, match="80 tokens plus 30.*holds 100"):
        fit_messages(messages, encode, n_ctx=100, reserve=30)
    tokens, kept, dropped = fit_messages(messages, encode, 100, 30, OverflowPolicy.DROP_OLDEST)
    assert len(tokens) <= 70 and dropped == 2
    assert kept[0].role == "system" and kept[-1].content == "q"
    with pytest.raises(ContextOverflowError):
        fit_messages([Message("system", "s"), Message("user", "q")], encode, 15, 0, OverflowPolicy.DROP_OLDEST)


class _Runner:
    """Drives requests through a manager the way the engine thread does."""

    def __init__(self, backend, manager):
        self.backend, self.manager = backend, manager
        self.last_source = None

    def run(self, prompt):
        from localllm.engine.generate import generate

        lease = self.manager.acquire(prompt)
        self.last_source = lease.source
        try:
            chunks = list(generate(self.backend, lease.cache, GenerationRequest(tuple(prompt), GREEDY, max_tokens=4)))
        finally:
            self.manager.release(lease)
        return chunks[-1].stats
