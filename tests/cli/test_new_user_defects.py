"""What a new user tripped on (issue #17), through the real CLI: `show PATH`, `show
--template` without one, empty prompts, `--max-tokens 0`, a context beyond training,
`import` over a name in use, and the pull bar's units."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture(autouse=True)
def _home(isolated_home):
    return isolated_home


def with_context_length(src: Path, dst: Path, n: int) -> Path:
    """A copy of `src` whose header says it was trained on `n` tokens."""
    import gguf

    shutil.copy(src, dst)
    reader = gguf.GGUFReader(str(dst), "r+")
    field = reader.fields["llama.context_length"]
    field.parts[field.data[0]][0] = n
    del reader  # flushes the memory map
    return dst


def expect_user_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localllm: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_show_describes_a_gguf_file_by_path(stories_path):
    r = run_cli("show", str(stories_path))
    assert r.returncode == 0, r.stderr
    assert "architecture    llama" in r.stdout
    assert "context length  2048" in r.stdout
    assert str(stories_path) in r.stdout


def test_show_template_of_a_model_without_one_is_a_user_error(stories_path):
    expect_user_error(run_cli("show", str(stories_path), "--template"), "has no chat template")


def test_a_path_given_where_a_name_is_needed_says_how_to_import_it(stories_path):
    r = run_cli("rm", str(stories_path))
    expect_user_error(r, "is a file path", "localllm import")
    assert "existing file" not in r.stderr


def test_an_empty_prompt_from_stdin_is_refused(stories_path):
    expect_user_error(run_cli("run", str(stories_path), input="\n"), "the prompt is empty")
    expect_user_error(run_cli("run", str(stories_path), "  "), "the prompt is empty")


def test_max_tokens_zero_is_refused_and_minus_one_means_no_limit(stories_path):
    expect_user_error(run_cli("run", str(stories_path), "Hi", "--max-tokens", "0"), "-1 for no limit")
    expect_user_error(run_cli("run", str(stories_path), "Hi", "--max-tokens", "-2"), "-1 for no limit")
    r = run_cli("run", str(stories_path), "Once upon a time", "--max-tokens", "-1", "--ctx-size", "48",
                "--temperature", "0", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_a_context_beyond_training_is_honoured_with_a_warning(stories_path, tmp_path):
    short = with_context_length(stories_path, tmp_path / "short.gguf", 128)
    r = run_cli("run", str(short), "Once upon a time", "--ctx-size", "512", "--max-tokens", "4",
                "--temperature", "0", "--threads", "1", "--verbose")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("localllm: warning:")]
    assert warnings == ["localllm: warning: a context of 512 tokens is beyond the 128 short.gguf was trained on: "
                        "text past that point may degrade"]
    assert "context 512," in r.stderr  # the load line: the size asked for, not 128
    quiet = run_cli("run", str(short), "Once", "--ctx-size", "128", "--max-tokens", "2", "--threads", "1")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    default = run_cli("run", str(short), "Once", "--max-tokens", "2", "--threads", "1", "--verbose")
    assert default.returncode == 0 and "warning" not in default.stderr
    assert "context 128," in default.stderr  # the default (4096) stops at the training context


def test_import_over_a_name_in_use_says_what_it_replaced(stories_path, tmp_path):
    first = run_cli("import", str(stories_path), "--name", "mine")
    assert first.returncode == 0 and "named another model" not in first.stderr
    again = run_cli("import", str(stories_path), "--name", "mine")
    assert again.returncode == 0 and "named another model" not in again.stderr  # the same file
    other = with_context_length(stories_path, tmp_path / "other.gguf", 1024)
    replaced = run_cli("import", str(other), "--name", "mine:latest")
    assert replaced.returncode == 0, replaced.stderr
    assert "mine:latest named another model before (sha256:" in replaced.stderr


def test_the_pull_bar_speaks_binary_units_throughout():
    from rich.console import Console

    from localllm.commands.models import BarDisplay
    from localllm.registry.entries import PullProgress

    out = io.StringIO()
    bar = BarDisplay("x", console=Console(file=out, force_terminal=True, width=160))
    for done in (0, 3 << 20, 6 << 20, 9 << 20):
        bar(PullProgress("downloading", digest="ab", total=10 << 20, completed=done, file="x.gguf"))
    bar.progress.refresh()
    bar.close()
    rates = re.findall(r"\d ([KMGT]i?B)/s", out.getvalue())
    assert rates and all(unit.endswith("iB") for unit in rates), rates
