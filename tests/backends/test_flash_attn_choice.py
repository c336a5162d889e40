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


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", ctx_size=512, threads=1,
                    **({"parallel": 1} | kw)).validate()


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


def test_measure_times_both_settings(stories_path):
    import llama_cpp

    from localllm.cpu_backend import llama_log
    from localllm.cpu_backend.attention_calibration import measure

    llama_log.install(verbose=False)
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(stories_path).encode(), params)
    try:
        timings = measure(model, flash_attn_on=[False, True], threads=1, kv_type=llama_cpp.GGML_TYPE_F16,
                          depth_hi=96, chunk=32, rounds=1, decode_steps=2)
    finally:
        llama_cpp.llama_model_free(model)
    assert set(timings) == {False, True}
    for t in timings.values():
        assert t.prefill_s_per_token > 0 and t.decode_s_lo > 0 and t.decode_s_hi > 0
        assert (t.depth_lo, t.depth_hi) == (32, 96)


@pytest.mark.parametrize("faster", [True, False])
def test_auto_follows_the_cached_measurement(stories_path, tmp_path, faster):
    """A cached entry for this model file and machine decides without measuring again:
    the entry written here says flash attention is (or is not) three times faster."""
    from localllm.cpu_backend.attention_calibration import AttentionTiming, CACHE_FILE, machine_key, model_key

    fast = AttentionTiming(1e-4, 32, 1e-3, 160, 1.1e-3)
    slow = AttentionTiming(3e-4, 32, 3e-3, 160, 3.3e-3)
    key = f"{machine_key(1)}|{model_key(str(stories_path), 'f16')}"
    entry = {"true": asdict(fast if faster else slow), "false": asdict(slow if faster else fast)}
    file = tmp_path / "cache" / CACHE_FILE
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"format": 1, "choices": {key: entry}}))
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    try:
        assert backend.flash_attn is faster
        assert "measured earlier" in backend.attention_note
    finally:
        backend.close()


def test_auto_measures_once_and_caches(stories_path, tmp_path):
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    backend.close()
    file = tmp_path / "cache" / "attention-calibration.json"
    if "too busy" in backend.attention_note:  # the shared machine was overloaded: nothing cached
        assert not file.exists() or not json.loads(file.read_text()).get("choices")
        return
    (entry,) = json.loads(file.read_text())["choices"].values()
    assert set(entry) == {"true", "false"}
    again = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    try:
        assert "measured earlier" in again.attention_note
        assert again.flash_attn is backend.flash_attn
    finally:
        again.close()


def test_a_corrupt_cache_file_is_measured_again(stories_path, tmp_path):
    file = tmp_path / "cache" / "attention-calibration.json"
    file.parent.mkdir(parents=True)
    file.write_text("{not json")
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto"))
    backend.close()
    assert backend.attention_note.startswith("flash attention")


def test_auto_is_on_when_several_sequences_decode_together(stories_path, tmp_path):
    backend = load_backend(str(stories_path), _settings(tmp_path, flash_attn="auto", parallel=4))
    try:
        assert backend.flash_attn is True and "4 sequences decode together" in backend.attention_note
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
