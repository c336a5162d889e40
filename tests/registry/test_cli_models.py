"""`pull`, `run NAME`, `list`, `show`, `rm` and `import` through the real CLI in a
subprocess (`python -m localllm`), against the fake hub: a killed pull and a Ctrl-C
resume, two pulls at once fetch once, a full disk is refused, the TTY gets a bar."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path


from .conftest import REPO_ROOT, cli, cli_process, sha256

PROMPT = ("Once upon a time", "--max-tokens", "5", "--temperature", "0")


def partial_of(env: dict, data: bytes) -> Path:
    return Path(env["LOCALLLM_HOME"]) / "models" / "partials" / f"sha256-{sha256(data)}.partial"


def wait_for_partial(path: Path, at_least: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= at_least):
        assert proc.poll() is None, f"pull ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the pull made no progress"
        time.sleep(0.02)


def cdn(hub):
    return [r for r in hub.log if r.path.startswith("/cdn/")]


def test_pull_run_list_show_rm(env, hub, catalog_repo, stories_path):
    r = cli("pull", "llama3.2:1b", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "success: llama3.2:1b (1.1 MiB, Q4_K_M gguf)\n"
    for line in ("resolving llama3.2:1b", "downloading Llama-3.2-1B-Instruct-Q4_K_M.gguf (1.1 MiB)",
                 "verifying Llama-3.2-1B-Instruct-Q4_K_M.gguf", "writing manifest"):
        assert line in r.stderr.splitlines(), r.stderr
    by_name = cli("run", "llama3.2:1b", *PROMPT, env=env)
    by_path = cli("run", str(stories_path), *PROMPT, env=env)
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == by_path.stdout and by_name.stdout.startswith(", there was")
    listing = cli("list", env=env).stdout.splitlines()
    assert listing[0].split() == ["NAME", "SIZE", "QUANT", "FORMAT", "MODIFIED"]
    assert listing[1].split()[:6] == ["llama3.2:1b", "1.1", "MiB", "Q4_K_M", "gguf", "just"]
    show = cli("show", "llama3.2:1b", env=env).stdout
    for line in ("architecture    llama", "parameters      292.80K", "quantization    Q4_K_M", "context length  2048",
                 "chat template   no (plain completion prompts)", "licence         llama3.2"):
        assert line in show, show
    assert f"sha256:{sha256(stories_path.read_bytes())}" in show
    r = cli("rm", "llama3.2:1b", env=env)
    assert r.stdout == "removed llama3.2:1b (gguf); freed 1.1 MiB\n"
    r = cli("run", "llama3.2:1b", *PROMPT, env=env)
    assert r.returncode == 2
    assert r.stderr == "localllm: error: llama3.2:1b is not pulled: run `localllm pull llama3.2:1b`\n"


def test_import_then_run_by_name(env, stories_path):
    r = cli("import", str(stories_path), "--name", "stories:260k", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"imported {stories_path} as stories:260k (1.1 MiB, F32)")
    out = cli("run", "stories:260k", *PROMPT, env=env)
    assert out.returncode == 0 and out.stdout.startswith(", there was")
    [entry] = json.loads(cli("list", "--json", env=env).stdout)
    assert (entry["name"], entry["format"], entry["size_bytes"]) == ("stories:260k", "gguf", stories_path.stat().st_size)


def test_a_killed_pull_resumes_instead_of_starting_over(env, hub, catalog_repo, stories_bytes):
    hub.faults.delay_s = 0.05
    proc = cli_process("pull", "llama3.2:1b", env=env)
    partial = partial_of(env, stories_bytes)
    try:
        wait_for_partial(partial, 200_000, proc)
    finally:
        proc.kill()
        proc.communicate()
    kept = partial.stat().st_size
    assert 200_000 <= kept < len(stories_bytes)
    assert json.loads(cli("list", "--json", env=env).stdout) == []  # no half model
    hub.faults.delay_s = 0
    hub.log.clear()
    r = cli("pull", "llama3.2:1b", env=env)
    assert r.returncode == 0, r.stderr
    assert "downloading Llama-3.2-1B-Instruct-Q4_K_M.gguf (1.1 MiB, resuming at" in r.stderr
    assert cdn(hub)[0].range == f"bytes={kept}-"
    assert hub.bytes_served() == len(stories_bytes) - kept
    assert not partial.exists()


def test_ctrl_c_keeps_a_resumable_partial(env, hub, catalog_repo, stories_bytes):
    hub.faults.delay_s = 0.05
    proc = cli_process("pull", "llama3.2:1b", env=env)
    partial = partial_of(env, stories_bytes)
    wait_for_partial(partial, 100_000, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "pull interrupted: what was downloaded is kept; run `localllm pull llama3.2:1b` to resume" in err
    kept = partial.stat().st_size
    hub.faults.delay_s = 0
    hub.log.clear()
    assert cli("pull", "llama3.2:1b", env=env).returncode == 0
    assert cdn(hub)[0].range == f"bytes={kept}-"


def test_two_pulls_at_once_fetch_the_file_once(env, hub, catalog_repo, stories_bytes):
    hub.faults.delay_s = 0.01
    procs = [cli_process("pull", "llama3.2:1b", env=env) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert hub.bytes_served() == len(stories_bytes)
    blobs = list((Path(env["LOCALLLM_HOME"]) / "models" / "blobs").iterdir())
    assert [b.name for b in blobs] == [f"sha256-{sha256(stories_bytes)}"]
    assert blobs[0].read_bytes() == stories_bytes


def error_line(r) -> str:
    """The one error line, after the progress lines that came before it."""
    assert r.returncode == 2, r.stderr
    *progress, last = r.stderr.splitlines()
    assert all(not line.startswith("localllm:") for line in progress) and last.startswith("localllm: error: ")
    return last


def test_full_disk_and_hub_errors_are_one_line(env, hub, catalog_repo):
    hub.add_repo("acme/Secret-GGUF", {"s-Q4_K_M.gguf": b"x" * 100}, private=True)
    line = error_line(cli("pull", "llama3.2:1b", env=env | {"LOCALLLM_TEST_FREE_DISK_BYTES": "1000"}))
    assert line.startswith("localllm: error: not enough disk space for llama3.2:1b in ") and "1000 B available" in line
    assert hub.file_requests() == []
    line = error_line(cli("pull", "hf.co/acme/Secret-GGUF", env=env))
    assert "a private or gated repo" in line and "HF_TOKEN" in line
    assert "did you mean qwen2.5-coder" in error_line(cli("pull", "qwen-coder:7b", env=env))


def test_a_terminal_gets_a_progress_bar(env, hub, catalog_repo):
    hub.faults.delay_s = 0.02
    master, slave = pty.openpty()
    full = dict(os.environ) | env | {"TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "localllm", "pull", "llama3.2:1b"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, env=full, cwd=REPO_ROOT)
    os.close(slave)
    screen = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        screen += data
    os.close(master)
    proc.wait(timeout=30)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Llama-3.2-1B-Instruct-Q4_K_M.gguf" in text and "1.1/1.1 MiB" in text
    assert "/s" in text and "\x1b[" in text  # a live bar with a rate, drawn with escapes
