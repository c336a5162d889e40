"""`localllm service`: the launchd agent and the systemd user unit rendered into a temporary
home by the real CLI, validated (plistlib; systemd-analyze verify where it exists), their
command line run for real, and install + uninstall leaving the home exactly as it was.

HOME (and no XDG variables) points everything at the temporary home; --files-only keeps
the CLI from asking launchctl/systemctl anything, since this machine has no user session.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli

from localllm.commands.service import tail_lines
from localllm.errors import UserError
from localllm.service import MANAGERS, stable_interpreter
from localllm.service.systemd import quote, unquote_exec
UNIT_PATHS = {"launchd": "Library/LaunchAgents/localllm.serve.plist", "systemd": ".config/systemd/user/localllm.service"}
LOG = ".local/state/localllm/log/serve.log"  # platformdirs' user log folder on Linux
XDG = ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for name in XDG:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "data"))  # a setting the service must inherit
    monkeypatch.setenv("LOCALLLM_API_KEY", "secret")  # a secret it must not
    return home


def service(*args: str) -> subprocess.CompletedProcess:
    return run_cli("service", *args, timeout=60)


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every path under `root` (folders as None, links as their target), to compare a home
    before and after."""
    if not root.exists():
        return {}

    def content(p: Path):
        return os.readlink(p) if p.is_symlink() else None if p.is_dir() else p.read_bytes()

    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit_program(manager: str, unit: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment a unit file tells its manager to run."""
    if manager == "launchd":
        agent = plistlib.loads(unit.read_bytes())
        return agent["ProgramArguments"], agent.get("EnvironmentVariables", {})
    lines = unit.read_text().splitlines()
    program = unquote_exec(next(line for line in lines if line.startswith("ExecStart=")).removeprefix("ExecStart="))
    env = dict(unquote_exec(line.removeprefix("Environment="))[0].split("=", 1) for line in lines if line.startswith("Environment="))
    return program, env


def test_launchd_agent_is_a_valid_plist_that_restarts_on_failure(home):
    r = service("install", "--files-only", "--manager", "launchd", "--port", "12001", "--", "--keep-alive", "30m")
    assert r.returncode == 0, r.stderr
    agent = plistlib.loads((home / UNIT_PATHS["launchd"]).read_bytes())
    assert agent["Label"] == "localllm.serve"
    assert agent["ProgramArguments"] == [stable_interpreter(sys.executable), "-m", "localllm", "serve",
                                         "--port", "12001", "--keep-alive", "30m"]
    assert agent["RunAtLoad"] is True and agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == str(home / LOG)
    assert agent["EnvironmentVariables"]["LOCALLLM_HOME"] == os.environ["LOCALLLM_HOME"]
    assert "LOCALLLM_API_KEY" not in agent["EnvironmentVariables"]
    assert not any(k.startswith("LOCALLLM_TEST") for k in agent["EnvironmentVariables"])
    if shutil.which("plutil"):  # macOS's own validator
        lint = subprocess.run(["plutil", "-lint", str(home / UNIT_PATHS["launchd"])], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout


def systemd_verify(unit: Path) -> None:
    """systemd's own check of a unit file: a bad key or value is a warning on stderr, a
    missing executable an error."""
    if not shutil.which("systemd-analyze"):
        return
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in r.stderr.splitlines() if unit.name in line or "ignoring" in line]
    assert r.returncode == 0 and not problems, r.stderr


def test_systemd_unit_is_valid_and_restarts_on_failure(home):
    r = service("install", "--files-only", "--manager", "systemd", "--port", "12002")
    assert r.returncode == 0, r.stderr
    unit = home / UNIT_PATHS["systemd"]
    text = unit.read_text()
    for line in ("Restart=on-failure", "WantedBy=default.target", f"StandardOutput=append:{home / LOG}",
                 f"StandardError=append:{home / LOG}"):
        assert line in text.splitlines(), text
    link = unit.parent / "default.target.wants" / unit.name  # enabled, as `systemctl --user enable` would
    assert link.is_symlink() and link.resolve() == unit.resolve()
    program, env = unit_program("systemd", unit)
    assert program == [stable_interpreter(sys.executable), "-m", "localllm", "serve", "--port", "12002"]
    assert env["LOCALLLM_HOME"] == os.environ["LOCALLLM_HOME"] and "LOCALLLM_API_KEY" not in env
    systemd_verify(unit)


def test_systemd_quoting_survives_spaces_percent_and_dollar(tmp_path):
    """A unit whose interpreter path needs quoting still names that interpreter."""
    from localllm.service import ServiceSpec
    from localllm.service.systemd import SystemdUserUnit

    odd = tmp_path / "my odd 100% $dir"
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    spec = ServiceSpec(program=(str(odd / "python"), "-m", "localllm", "serve", "--port", "12003"), port=12003,
                       log_file=tmp_path / "logs 50%" / "serve.log", environment={"LOCALLLM_HOME": str(odd)})
    unit = tmp_path / "localllm.service"
    unit.write_bytes(SystemdUserUnit().render(spec))
    assert unit_program("systemd", unit) == (list(spec.program), {"LOCALLLM_HOME": str(odd)})
    assert SystemdUserUnit().read_port(unit.read_bytes()) == 12003
    systemd_verify(unit)
    for word in ("plain", "two words", 'a "quote"', "back\\slash", "50%", "$HOME", ""):
        assert unquote_exec(f"/bin/true {quote(word, expands_dollar=True)}") == ["/bin/true", word]
    with pytest.raises(UserError, match="quotes or backslashes"):
        SystemdUserUnit().render(replace(spec, program=('/opt/a"b/python', "-m", "localllm")))


@pytest.mark.parametrize("manager", MANAGERS)
@pytest.mark.parametrize("lived_in", [False, True], ids=["empty-home", "lived-in-home"])
def test_install_then_uninstall_leaves_the_home_as_it_was(home, manager, lived_in):
    if lived_in:  # folders the service shares with other programs must stay
        for folder in (".config/systemd/user/default.target.wants", ".local/state/other", "Library/LaunchAgents"):
            (home / folder).mkdir(parents=True)
        (home / ".config/systemd/user/other.service").write_text("[Service]\nExecStart=/bin/true\n")
        (home / ".config/systemd/user/default.target.wants/other.service").symlink_to("../other.service")
        (home / "Library/LaunchAgents/other.plist").write_bytes(plistlib.dumps({"Label": "other"}))
        (home / ".config/empty-but-mine").mkdir()
    before = snapshot(home.parent)
    for _ in range(2):  # installing again updates the same files
        r = service("install", "--files-only", "--manager", manager)
        assert r.returncode == 0, r.stderr
    assert (home / UNIT_PATHS[manager]).is_file()
    (home / LOG).write_text("the server wrote this\n")  # as the running service would
    r = service("uninstall", "--files-only", "--manager", manager)
    assert r.returncode == 0, r.stderr
    assert snapshot(home.parent) == before
    r = service("uninstall", "--files-only", "--manager", manager)
    assert r.returncode == 0 and "not installed" in r.stdout


def test_both_managers_files_in_one_home_share_the_log_folder_until_the_last_uninstall(home):
    before = snapshot(home.parent)
    for manager in MANAGERS:
        assert service("install", "--files-only", "--manager", manager).returncode == 0
    (home / LOG).write_text("log\n")
    r = service("uninstall", "--files-only", "--manager", MANAGERS[0])
    assert r.returncode == 0 and "stays" in r.stdout and (home / LOG).exists()
    assert service("uninstall", "--files-only", "--manager", MANAGERS[0]).stdout.startswith("localllm service: not installed")
    assert service("uninstall", "--files-only", "--manager", MANAGERS[1]).returncode == 0
    assert snapshot(home.parent) == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize("manager", MANAGERS)
def test_the_units_command_serves_and_status_reports_its_port(home, manager):
    port = free_port()
    assert service("install", "--files-only", "--manager", manager, "--port", str(port)).returncode == 0
    r = service("status", "--files-only", "--manager", manager)
    assert r.returncode == 3 and f"http://127.0.0.1:{port} (not answering)" in r.stdout, r.stdout
    program, env = unit_program(manager, home / UNIT_PATHS[manager])
    server = subprocess.Popen(program, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):  # until the real server answers (no timing asserted; the test timeout bounds it)
            r = service("status", "--files-only", "--manager", manager)
            if r.returncode == 0 or server.poll() is not None:
                break
            time.sleep(0.1)
        assert r.returncode == 0, (r.stdout, server.stderr.read() if server.poll() is not None else "")
        assert f"endpoint: http://127.0.0.1:{port} (answering, localllm " in r.stdout
        assert str(home / UNIT_PATHS[manager]) in r.stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert service("uninstall", "--files-only", "--manager", manager).returncode == 0


def test_without_a_user_session_every_action_says_so_and_exits_2(home):
    """The manager that is not this platform's can never be reached here; this platform's
    only where there is no session (a test must never install a real service)."""
    from localllm.service import select_manager

    foreign = "systemd" if sys.platform == "darwin" else "launchd"
    candidates = [foreign] + [m for m in MANAGERS if m != foreign and select_manager(m).session_problem()]
    for manager in candidates:
        for action in ("install", "uninstall", "status"):
            r = service(action, "--manager", manager)
            assert r.returncode == 2, (manager, action, r.stderr)
            assert "session" in r.stderr or "not on this machine" in r.stderr
            assert "--files-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not home.exists()


@pytest.mark.parametrize("args,needle", [
    (["--port", "0"], "--port 0"),
    (["--port", "70000"], "--port 70000"),
    (["--", "--host", "0.0.0.0"], "--host"),
    (["--", "--api-key=abc"], "--api-key"),
    (["--", "--keep-alive"], "--keep-alive"),
    (["--", "--no-such-flag"], "--no-such-flag"),
])
def test_install_refuses_bad_flags_before_writing_anything(home, args, needle):
    r = service("install", "--files-only", *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not home.exists()


def test_logs_prints_the_end_of_the_log(home):
    r = service("logs")
    assert r.returncode == 0 and "no log yet" in r.stderr
    (home / LOG).parent.mkdir(parents=True)
    (home / LOG).write_text("".join(f"line {i}\n" for i in range(1000)))
    r = service("logs", "-n", "3")
    assert r.returncode == 0 and r.stdout == "line 997\nline 998\nline 999\n"


@pytest.mark.timeout(120)
def test_logs_follow_prints_what_is_appended(home):
    (home / LOG).parent.mkdir(parents=True)
    (home / LOG).write_text("old line\n")
    follower = subprocess.Popen([sys.executable, "-m", "localllm", "service", "logs", "-n", "1", "-f"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout.readline() == "old line\n"
        with (home / LOG).open("a") as log:
            log.write("new line\n")
        assert follower.stdout.readline() == "new line\n"  # blocks until it comes (the timeout bounds it)
    finally:
        follower.terminate()
        follower.wait(timeout=30)


@pytest.mark.parametrize("n", [0, 1, 5, 300])
def test_tail_lines_reads_back_across_blocks(tmp_path, n):
    path = tmp_path / "log"
    lines = [f"{i} {'x' * (i % 13)}\n".encode() for i in range(200)] + [b"no newline at the end"]
    path.write_bytes(b"".join(lines))
    with path.open("rb") as f:
        assert tail_lines(f, n, block=16) == (lines[-n:] if n else [])
        assert f.tell() == path.stat().st_size


def test_a_homebrew_keg_runs_through_its_opt_link():
    keg = "/opt/homebrew/Cellar/localllm/0.1.0/libexec/bin/python"
    assert stable_interpreter(keg) == "/opt/homebrew/opt/localllm/libexec/bin/python"
    assert stable_interpreter("/home/me/.local/pipx/venvs/localllm/bin/python") == "/home/me/.local/pipx/venvs/localllm/bin/python"
