"""`localllm chat` as a command: its help, the terminal check, and that `localllm --help`
still imports no Textual."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localllm", *args], capture_output=True, text=True,
                          env=dict(os.environ), stdin=subprocess.DEVNULL, timeout=60)


def test_chat_help_lists_its_flags():
    out = run_cli("chat", "--help")
    assert out.returncode == 0
    for flag in ("MODEL", "--light", "--overflow", "--ctx-size", "--backend"):
        assert flag in out.stdout


def test_chat_without_a_terminal_says_what_to_use_instead(isolated_home, stories_path):
    out = run_cli("chat", str(stories_path))  # a good model: a bad one is refused first
    assert out.returncode == 2
    assert out.stderr.strip() == "localllm: error: localllm chat needs a terminal: for scripts use `localllm run MODEL PROMPT`"


def test_help_does_not_import_textual():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "localllm", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not any(name.split(".")[0] in ("textual", "rich") for name in imported)
