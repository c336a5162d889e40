"""Prompt bytes that are not UTF-8, as an argument or on stdin, through the real CLI:
one line and exit 2, not a UnicodeEncodeError."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import run_cli


def test_prompt_that_is_not_utf8_is_one_line(stories_path, isolated_home):
    # "\udcff" is how Python spells the byte 0xff of an argument that is not UTF-8.
    r = run_cli("run", str(stories_path), "\udcff\udcfe", "--max-tokens", "2", "--threads", "1", timeout=60)
    assert r.returncode == 2 and "not valid UTF-8" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "localllm", "run", str(stories_path), "--max-tokens", "2",
                        "--threads", "1"], input=b"\xff\xfe hi", capture_output=True, timeout=60)
    assert r.returncode == 2 and b"not valid UTF-8" in r.stderr, r.stderr
