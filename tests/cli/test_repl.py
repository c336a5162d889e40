"""The line REPL of `localllm run` on a real terminal (a pty): multi-turn with reuse."""

import json
import os
import pty
import subprocess
import sys
import time

from conftest import REPO


def test_repl_turns_reuse_the_cache(stories_path, isolated_home):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "localllm", "run", str(stories_path), "--temperature", "0",
         "--max-tokens", "12", "--stats", "json", "--system", "A story."],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=dict(os.environ),
    )
    os.close(slave)
    try:
        for line in ("Once upon a time", "The dog ran", "/bye"):
            os.write(master, (line + "\n").encode())
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    stats = [json.loads(l) for l in err.decode().splitlines() if l.startswith("{")]
    assert len(stats) == 2
    first, second = stats
    assert first["cached_tokens"] == 0
    # Turn two continues the running text: the first turn is already in the cache.
    assert second["cached_tokens"] >= first["prompt_tokens"]
    assert out.decode().count("\n") >= 2
