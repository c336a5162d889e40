"""--flash-attn on|off|auto: forced settings, the measured choice and its cache per model
file and machine (cpu_backend/attention_calibration.py), on the real llama.cpp backend."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from localllm.backend.select import load_backend
from localllm.config import Settings
from localllm.errors import UserError
from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _fresh_process_memo(monkeypatch):
    """Each test starts as a new process would: no measurement made earlier in it."""
    from localllm.cpu_backend import attention_calibration

    monkeypatch.setattr(attention_calibration, "_measured_here", {})


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", threads=1,
                    **({"parallel": 1, "ctx_size": 512} | kw)).validate()


def _greedy(backend, n: int = 40) -> list[int]:
    cache = backend.new_cache()
    try:
        out, logits = [], backend.forward([backend.vocabulary.bos_id], cache)
        for _ in range(n):
            out.append(int(logits.argmax()[-1]))
            logits = backend.forward([out[-1]], cache)
        return out
    finally:
        cache.close()


@pytest.mark.parametrize("mode, expected", [("on", True), ("off", False)])
def test_forced_setting_is_used_without_measuring(stories_path, tmp_path, mode, expected):
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn=mode))
    try:
        assert backend.flash_attn is expected
        assert f"--flash-attn {mode}" in backend.attention_note
    finally:
        backend.close()
    assert not (tmp_path / "cache" / "attention-calibration.json").exists()


def test_both_settings_give_the_same_greedy_text(stories_path, tmp_path):
    tokens = {}
    for mode in ("on", "off"):
        backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn=mode))
        try:
            tokens[mode] = _greedy(backend)
        finally:
            backend.close()
    assert tokens["on"] == tokens["off"]


@pytest.fixture
def stories_model(stories_path):
    import llama_cpp

    from localllm.cpu_backend import llama_log
    from localllm.cpu_backend.llamacpp import AMX_BUILD

    llama_log.install(verbose=False)
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = not AMX_BUILD  # as the backend loads it
    model = llama_cpp.llama_model_load_from_file(str(stories_path).encode(), params)
    yield model
    llama_cpp.llama_model_free(model)


def test_measure_decodes_at_the_judged_depth(stories_model):
    """Every decode sample attends over `depth` cached tokens (each decoded token is
    removed again); 300 cached tokens plus the decoded one make llama.cpp's attention
    view 512 cells, the split-KV regime of its flash-attention decode."""
    import llama_cpp

    from localllm.cpu_backend.attention_calibration import measure

    timings = measure(stories_model, flash_attn_on=[False, True], threads=1, kv_type=llama_cpp.GGML_TYPE_F16,
                      depth=300, decode_steps=3)
    assert set(timings) == {False, True}
    for t in timings.values():
        assert t.prefill_s_per_token > 0 and t.decode_s > 0
        assert t.depth == 300 and t.cached_at_steps == (300, 300, 300)
        assert t.history == "copied"  # the history was loaded, not prefilled


def test_a_measurement_past_its_budget_raises_too_slow(stories_model):
    """llama.cpp's abort callback stops the measurement at the deadline, and the error
    reaches the caller from the thread the measurement ran on."""
    import llama_cpp

    from localllm.cpu_backend.attention_calibration import CalibrationTooSlow, measure

    with pytest.raises(CalibrationTooSlow):
        measure(stories_model, flash_attn_on=[False, True], threads=1, kv_type=llama_cpp.GGML_TYPE_F16,
                depth=300, budget_s=0.0)


def test_a_replicated_state_loads_as_that_many_cached_tokens(stories_model):
    """The history the calibration loads instead of prefilling: llama.cpp accepts it as
    `n` cached tokens (in both V layouts: flash attention off stores V transposed) and
    decodes on top of it; a one-cell copy of a one-cell state is that state."""
    import ctypes

    import llama_cpp
    import numpy as np

    from localllm.cpu_backend.attention_calibration import _context, _Feeder, replicated_state

    for flash_attn in (False, True):
        ctx = _context(stories_model, flash_attn=flash_attn, n_ctx=512, threads=1, kv_type=llama_cpp.GGML_TYPE_F16)
        feeder = _Feeder(ctx, 64, 512, float("inf"))
        try:
            feeder.feed(1)
            seed = (ctypes.c_uint8 * llama_cpp.llama_state_seq_get_size(ctx, 0))()
            seed = bytes(seed[:llama_cpp.llama_state_seq_get_data(ctx, seed, len(seed), 0)])
            assert replicated_state(seed, 1) == seed
            assert replicated_state(seed[:-1], 5) is None and replicated_state(seed + b"x", 5) is None
            state = replicated_state(seed, 400)
            llama_cpp.llama_memory_clear(feeder.mem, True)
            src = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
            assert llama_cpp.llama_state_seq_set_data(ctx, src, len(state), 0) == len(state)
            assert feeder.cached() == 400
            assert llama_cpp.llama_memory_seq_pos_min(feeder.mem, 0) == 0
            feeder.pos = 400
            feeder.feed(1)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(512,))
            assert np.isfinite(logits).all() and feeder.cached() == 401
        finally:
            feeder.close()
            llama_cpp.llama_free(ctx)


def _cache_key(stories_path, depth: int) -> str:
    from localllm.cpu_backend.attention_calibration import machine_key, model_key

    return f"{machine_key(1)}|{model_key(str(stories_path), 'f16')}|depth {depth}"


@pytest.mark.parametrize("faster", [True, False])
def test_auto_follows_the_cached_measurement(stories_path, tmp_path, faster):
    """A cached entry for this model file, machine and judged depth decides without
    measuring again: the entry written here says flash attention is (or is not) three
    times faster."""
    from localllm.cpu_backend.attention_calibration import FORMAT, AttentionTiming, CACHE_FILE

    fast = AttentionTiming(1e-4, 256, 1e-3)
    slow = AttentionTiming(3e-4, 256, 3e-3)
    entry = {"true": asdict(fast if faster else slow), "false": asdict(slow if faster else fast)}
    file = tmp_path / "cache" / CACHE_FILE
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"format": FORMAT, "choices": {_cache_key(stories_path, 256): entry}}))
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    try:
        assert backend.flash_attn is faster
        assert "measured earlier" in backend.attention_note
    finally:
        backend.close()


@pytest.mark.parametrize("ctx_size, depth", [(512, 256), (4096, 1500)])
def test_auto_measures_once_at_the_judged_depth_and_caches(stories_path, tmp_path, ctx_size, depth):
    """The judged depth is half the context, at most 1,500 tokens; the cached measurement
    was taken there (256 cached + 1 decoded: a 512-cell attention view). The context is
    asked for: the default stops at the model's 2,048 tokens."""
    settings = _settings(tmp_path, flash_attn="auto", ctx_size=ctx_size, ctx_size_asked=True)
    backend = load_backend(str(stories_path), settings)
    backend.close()
    file = tmp_path / "cache" / "attention-calibration.json"
    if "too busy" in backend.attention_note:  # the shared machine was overloaded: nothing cached
        assert not file.exists() or not json.loads(file.read_text()).get("choices")
        return
    assert f"at {depth} cached" in backend.attention_note
    (key, entry), = json.loads(file.read_text())["choices"].items()
    assert key == _cache_key(stories_path, depth) and set(entry) == {"true", "false"}
    for timing in entry.values():
        assert timing["depth"] == depth and set(timing["cached_at_steps"]) == {depth}
    again = load_backend(str(stories_path), settings)
    try:
        assert "measured earlier" in again.attention_note
        assert again.flash_attn is backend.flash_attn
    finally:
        again.close()


def test_an_entry_of_an_earlier_format_is_measured_again(stories_path, tmp_path):
    """Format 1 judged decode from 32 and 160 cached tokens, below the split-KV regime; its
    decisions must not survive the format change, even one that reads as a current entry
    under the current key (here: flash attention three times faster)."""
    from localllm.cpu_backend.attention_calibration import FORMAT, AttentionTiming

    stale = {"true": asdict(AttentionTiming(1e-4, 256, 1e-3)), "false": asdict(AttentionTiming(3e-4, 256, 3e-3))}
    file = tmp_path / "cache" / "attention-calibration.json"
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"format": 1, "choices": {_cache_key(stories_path, 256): stale}}))
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    backend.close()
    if "too busy" in backend.attention_note:
        return
    assert "(measured:" in backend.attention_note
    data = json.loads(file.read_text())
    assert FORMAT > 1 and data["format"] == FORMAT
    (entry,) = data["choices"].values()
    assert entry["true"]["cached_at_steps"] and entry != stale


def test_a_corrupt_cache_file_is_measured_again(stories_path, tmp_path):
    file = tmp_path / "cache" / "attention-calibration.json"
    file.parent.mkdir(parents=True)
    file.write_text("{not json")
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    backend.close()
    assert backend.attention_note.startswith("flash attention")


def test_auto_is_measured_for_several_sequences_with_streams(stories_path, tmp_path):
    """Each sequence has a KV stream of its own: batched decoding computes what one
    sequence alone does, so the measurement decides, drafting on (the default) or off."""
    for draft in ("auto", "none"):
        backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto", parallel=4, draft=draft))
        try:
            assert backend.streams and "measured" in backend.attention_note
        finally:
            backend.close()
    assert (tmp_path / "cache" / "attention-calibration.json").exists()


def test_auto_is_on_for_several_sequences_sharing_one_buffer(tmp_path):
    """A sliding-window model keeps one KV buffer for all sequences, where without flash
    attention a batched sequence's logits differ from alone: on, nothing measured."""
    import sys

    from tests.conftest import REPO, models_dir

    sys.path.insert(0, str(REPO / "tests" / "backends"))
    from cache_kind_models import write_gemma3

    gemma3 = write_gemma3(tmp_path / "gemma3-tiny.gguf", models_dir())
    backend = load_backend(str(gemma3), _settings(tmp_path, flash_attn="auto", parallel=4))
    try:
        assert not backend.streams and backend.flash_attn is True
        assert "4 sequences share one KV buffer" in backend.attention_note
    finally:
        backend.close()
    assert not (tmp_path / "cache" / "attention-calibration.json").exists()


def test_off_with_a_quantized_kv_cache_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--flash-attn off cannot be used with --kv-type q8_0"):
        _settings(tmp_path, flash_attn="off", kv_type="q8_0")
    assert _settings(tmp_path, flash_attn="auto", kv_type="q8_0").flash_attn == "auto"


def test_cli_refuses_off_with_q8_0(stories_path, isolated_home):
    result = run_cli("run", str(stories_path), "hi", "--flash-attn", "off", "--kv-type", "q8_0")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--flash-attn off" in result.stderr
