"""`--draft`, `--draft-max`, `--draft-ngram` through the real CLI: the same text in every
mode, drafts in `--stats json`, the acceptance rate in `--verbose`, bad values exit 2."""

import json

import pytest

from conftest import run_cli

PROMPT = "Tim had a red ball. He liked to play with his red ball. One day, Tim"


@pytest.fixture(autouse=True)
def _home(isolated_home):
    return isolated_home


def run_greedy(stories_path, *flags):
    r = run_cli("run", str(stories_path), PROMPT, "--temperature", "0", "--max-tokens", "60", "--threads", "1",
                "--stats", "json", *flags)
    assert r.returncode == 0, r.stderr
    return r.stdout, json.loads(r.stderr.strip().splitlines()[-1])


def test_every_mode_writes_the_same_text_and_counts_drafts(stories_path):
    plain, plain_stats = run_greedy(stories_path, "--draft", "none")
    spec, spec_stats = run_greedy(stories_path, "--draft", "prompt-lookup", "--draft-max", "6", "--draft-ngram", "2")
    auto, _ = run_greedy(stories_path)  # the default: auto
    assert spec == plain == auto
    assert plain_stats["draft_tokens"] == plain_stats["accepted_tokens"] == 0
    assert spec_stats["draft_tokens"] >= spec_stats["accepted_tokens"] > 0


def test_the_environment_sets_the_default(stories_path):
    r = run_cli("run", str(stories_path), PROMPT, "--temperature", "0", "--max-tokens", "30", "--threads", "1",
                "--stats", "json", env={"LOCALLLM_DRAFT": "prompt-lookup"})
    assert json.loads(r.stderr.strip().splitlines()[-1])["draft_tokens"] > 0


def test_verbose_reports_the_acceptance_rate(stories_path):
    r = run_cli("run", str(stories_path), PROMPT, "--temperature", "0", "--max-tokens", "40", "--threads", "1",
                "--draft", "prompt-lookup", "--verbose")
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stderr.splitlines() if l.startswith("speculative decoding:"))
    assert "drafted tokens accepted (" in line and "%)" in line


@pytest.mark.parametrize("flags,fragment", [
    (("--draft-max", "0"), "draft max 0"),
    (("--draft-ngram", "40"), "n-gram length 40"),
])
def test_bad_values_are_one_line_and_exit_2(stories_path, flags, fragment):
    r = run_cli("run", str(stories_path), "hi", *flags)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "--draft" in lines[0]


def test_unknown_mode_is_refused(stories_path):
    r = run_cli("run", str(stories_path), "hi", "--draft", "sometimes")
    assert r.returncode == 2 and "sometimes" in r.stderr
