"""Smoke test in a real terminal: `localllm chat` under tmux, driven by send-keys and
read back with capture-pane. Skipped where tmux is missing, unless
LOCALLLM_REQUIRE_TMUX=1 says this machine must have it (then it fails)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from localllm.tui.store import ConversationStore


def need_tmux() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        message = "tmux is not installed: the real-terminal smoke test needs it"
        if os.environ.get("LOCALLLM_REQUIRE_TMUX") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return tmux


class TmuxSession:
    def __init__(self, tmux: str, command: str, width: int = 100, height: int = 30):
        self.tmux = tmux
        self.socket = f"localllm-test-{uuid.uuid4().hex[:8]}"
        self.name = "chat"
        self._run("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command)

    def _run(self, *args: str) -> str:
        out = subprocess.run([self.tmux, "-L", self.socket, *args], capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def send(self, *keys: str) -> None:
        self._run("send-keys", "-t", self.name, *keys)

    def capture(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.name)

    def alive(self) -> bool:
        return subprocess.run([self.tmux, "-L", self.socket, "has-session", "-t", self.name],
                              capture_output=True, timeout=20).returncode == 0

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.capture() if self.alive() else screen
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} did not appear within {timeout} s; the screen was:\n{screen}")

    def kill(self) -> None:
        subprocess.run([self.tmux, "-L", self.socket, "kill-server"], capture_output=True, timeout=20)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_chat_in_a_real_terminal(stories_path, tmp_path):
    tmux = need_tmux()
    home, config = tmp_path / "home", tmp_path / "config.toml"
    rc_file = tmp_path / "rc.txt"
    # Textual draws on stderr, so it cannot be redirected; the exit code goes to a file.
    command = " ".join([
        "env", f"LOCALLLM_HOME={shlex.quote(str(home))}", f"LOCALLLM_CONFIG={shlex.quote(str(config))}", "TERM=xterm-256color",
        shlex.quote(sys.executable), "-m", "localllm", "chat", shlex.quote(str(stories_path)), "--ctx-size", "512", "--threads", "1",
        ";", "echo", "$?", ">", shlex.quote(str(rc_file)),
    ])
    session = TmuxSession(tmux, command)
    try:
        session.wait_for(r"llamacpp", timeout=90)  # loaded: the status bar names the backend
        session.send("Once upon a time", "Enter")
        session.wait_for(r"Assistant · stories260K", timeout=60)
        # Finished: the footer no longer offers "esc Stop" and the status bar has the speed.
        screen = session.wait_for(r"(?s)^(?!.*esc Stop).*\d+ tok/s", timeout=60)
        assert "Search chats" in screen and "Once upon a time" in screen  # the chat list has it
        session.send("C-q")
        deadline = time.monotonic() + 30
        while session.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not session.alive(), "the app did not quit on Ctrl+Q"
    finally:
        session.kill()
    assert rc_file.read_text().strip() == "0"
    store = ConversationStore.in_home(home)
    (conv,) = store.list()
    messages = store.messages(conv.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[1].content.strip() and messages[1].state == "done"
