"""`localllm run` through the real CLI in a subprocess: output, stats and every error."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli

REQUIRED_STATS = {
    "prompt_tokens", "cached_tokens", "generated_tokens", "ttft_s", "prefill_tokens_per_s",
    "decode_tokens_per_s", "peak_rss_bytes", "draft_tokens", "accepted_tokens", "backend",
}


@pytest.fixture(autouse=True)
def _home(isolated_home):
    return isolated_home


def test_help_and_version_do_not_import_backends():
    code = (
        "import sys; from localllm.cli import main\n"
        "for argv in (['--version'], ['--help'], ['run', '--help']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('llama_cpp', 'mlx', 'textual', 'numpy', 'starlette', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "localllm 0.1.0" in out
    assert "HEAVY []" in out


def test_greedy_run_streams_the_story(stories_path):
    r = run_cli("run", str(stories_path), "Once upon a time", "--temperature", "0", "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(", there was a little girl named Lily")
    assert r.stderr == ""  # silent unless --verbose


def test_prompt_from_stdin_and_stats_json(stories_path):
    r = run_cli("run", str(stories_path), "--temperature", "0", "--max-tokens", "8", "--stats", "json", input="Once upon a time")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert REQUIRED_STATS <= stats.keys()
    assert stats["backend"] == "llamacpp"
    assert stats["generated_tokens"] == 8
    assert stats["prompt_tokens"] == 5
    assert stats["decode_tokens_per_s"] > 0 and stats["peak_rss_bytes"] > 0


def test_verbose_reports_in_words(stories_path):
    r = run_cli("run", str(stories_path), "Hi", "--max-tokens", "4", "--verbose")
    assert r.returncode == 0
    for words in ("loaded", "time to first token", "prefill", "decode", "peak RSS", "KV cache:", "MiB held"):
        assert words in r.stderr


def test_same_seed_same_text_through_the_cli(stories_path):
    args = ("run", str(stories_path), "Once upon a time", "--max-tokens", "30", "--temperature", "1.0")
    a = run_cli(*args, "--seed", "3").stdout
    b = run_cli(*args, "--seed", "3").stdout
    c = run_cli(*args, "--seed", "4").stdout
    assert a == b != c


def test_stop_string_is_not_printed(stories_path):
    r = run_cli("run", str(stories_path), "Once upon a time", "--temperature", "0", "--stop", "Lily")
    assert r.returncode == 0
    assert r.stdout == ", there was a little girl named \n"


def expect_error(r, *fragments, code=2):
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # one line, no traceback
    for f in fragments:
        assert f in lines[0]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    expect_error(run_cli("run", str(path), "hi"), str(path), "no such file")


def test_not_gguf(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am a text file")
    expect_error(run_cli("run", str(path), "hi"), str(path), "not a GGUF")


def test_truncated_gguf(stories_path, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(stories_path.read_bytes()[:300_000])
    expect_error(run_cli("run", str(path), "hi"), str(path), "truncated")


def test_header_cut_short(stories_path, tmp_path):
    path = tmp_path / "header.gguf"
    path.write_bytes(stories_path.read_bytes()[:2000])
    expect_error(run_cli("run", str(path), "hi"), str(path), "truncated")


def test_corrupted_header(stories_path, tmp_path):
    data = bytearray(stories_path.read_bytes())
    data[16:24] = (2**40).to_bytes(8, "little")  # an absurd metadata count
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    expect_error(run_cli("run", str(path), "hi"), str(path), "corrupted")


def test_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "alienformer")
    w.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    expect_error(run_cli("run", str(path), "hi"), str(path), "unsupported model architecture 'alienformer'")


def test_vocabulary_only_gguf():
    from conftest import require_model

    path = require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    expect_error(run_cli("run", str(path), "hi"), str(path), "only a vocabulary")


def test_prompt_longer_than_context(stories_path):
    r = run_cli("run", str(stories_path), "--ctx-size", "64", input="Once upon a time " * 40)
    expect_error(r, "the prompt has", "context holds 64", "--ctx-size")


def test_bad_flag_values():
    expect_error(run_cli("run", "x.gguf", "hi", "--top-p", "2"), "--top-p")
    r = run_cli("run", "x.gguf", "hi", "--temperature", "warm")
    assert r.returncode == 2 and "invalid float value" in r.stderr


def test_ctrl_c_stops_cleanly_with_130(stories_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", str(stories_path), "Once upon a time", "--temperature", "0.9", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
    )
    first = proc.stdout.read(20)  # generation has started
    assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
