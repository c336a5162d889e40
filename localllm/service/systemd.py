"""Linux: a systemd user unit in ~/.config/systemd/user (or $XDG_CONFIG_HOME/systemd/user).

`WantedBy=default.target` starts it when the user's manager starts (at login; with
`loginctl enable-linger` at boot); `Restart=on-failure` restarts a crash or an error exit.
Output is appended to the log file. A unit file has its own quoting: words in double
quotes with backslash escapes (ExecStart, Environment), `%` (specifiers) doubled
everywhere, `$` (variables) doubled in ExecStart's arguments; a log path is the rest of
its line; an executable's path may not hold quotes or backslashes at all.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

from localllm.errors import UserError
from localllm.service import ServiceSpec, ServiceState, home, port_in_args

UNIT = "localllm.service"
RESTART_S = 5
START_LIMIT_S, START_LIMIT_BURST = 120, 5  # at most 5 starts in 2 minutes


def quote(word: str, *, expands_dollar: bool) -> str:
    """One word of a unit file, quoted when it needs it. `$` is doubled only where systemd
    expands variables (ExecStart's arguments, not its executable, nor Environment=)."""
    text = word.replace("%", "%%")
    if expands_dollar:
        text = text.replace("$", "$$")
    if text and not any(c in text for c in ' \t"\'\\;'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(program: tuple[str, ...]) -> str:
    executable, *args = program
    if any(c in executable for c in '"\'\\\n'):  # systemd refuses these in an executable's path
        raise UserError(f"a systemd unit cannot run {executable!r} (quotes or backslashes in the path): "
                        f"install localllm under a plainer path")
    return " ".join([quote(executable, expands_dollar=False)] + [quote(a, expands_dollar=True) for a in args])


def unquote_exec(line: str) -> list[str]:
    """The words of an ExecStart value written by `exec_line`."""
    executable, *args = shlex.split(line)
    return [executable.replace("%%", "%")] + [a.replace("%%", "%").replace("$$", "$") for a in args]


def config_home() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return Path(xdg) if xdg and os.path.isabs(xdg) else home() / ".config"


class SystemdUserUnit:
    name = "systemd"

    def unit_path(self) -> Path:
        return config_home() / "systemd" / "user" / UNIT

    def render(self, spec: ServiceSpec) -> bytes:
        environment = "".join(f"Environment={quote(f'{k}={v}', expands_dollar=False)}\n" for k, v in spec.environment.items())
        log = "append:" + str(spec.log_file).replace("%", "%%")  # the rest of the line, unquoted
        return (
            "# Written by `localllm service install`; `localllm service uninstall` removes it.\n"
            "[Unit]\n"
            f"Description=localllm: local OpenAI- and Ollama-compatible endpoint on port {spec.port}\n"
            # A server that cannot start (a busy port, a broken config) stops retrying
            # after a few tries instead of filling the log; `status` then says "failed".
            f"StartLimitIntervalSec={START_LIMIT_S}\n"
            f"StartLimitBurst={START_LIMIT_BURST}\n"
            "\n"
            "[Service]\n"
            "Type=exec\n"
            f"ExecStart={exec_line(spec.program)}\n"
            f"{environment}"
            "Restart=on-failure\n"
            f"RestartSec={RESTART_S}\n"
            f"StandardOutput={log}\n"
            f"StandardError={log}\n"
            "\n"
            "[Install]\n"
            "WantedBy=default.target\n"
        ).encode()

    def read_port(self, unit: bytes) -> int | None:
        for line in unit.decode(errors="replace").splitlines():
            if line.startswith("ExecStart="):
                try:
                    return port_in_args(unquote_exec(line.removeprefix("ExecStart=")))
                except ValueError:
                    return None
        return None

    def session_problem(self) -> str | None:
        if shutil.which("systemctl") is None:
            return "systemctl is not on this machine (user units need systemd)"
        result = self._systemctl("show-environment")
        if result.returncode != 0:
            text = (result.stderr or result.stdout).strip()
            reason = text.splitlines()[0] if text else f"exit code {result.returncode}"
            return f"no systemd user session for this user (systemctl --user: {reason})"
        return None

    def login_links(self) -> list[tuple[Path, str]]:
        # What `systemctl --user enable` writes for WantedBy=default.target.
        return [(self.unit_path().parent / "default.target.wants" / UNIT, f"../{UNIT}")]

    def start(self) -> None:
        for args in (("daemon-reload",), ("enable", UNIT), ("restart", UNIT)):
            result = self._systemctl(*args)
            if result.returncode != 0:
                raise RuntimeError(f"systemctl --user {' '.join(args)} failed: {result.stderr.strip()}")

    def stop(self) -> None:
        self._systemctl("disable", "--now", UNIT)  # fails harmlessly when the unit is unknown

    def forget(self) -> None:
        """After the unit file is gone: make the manager drop it too."""
        self._systemctl("daemon-reload")
        self._systemctl("reset-failed", UNIT)

    def state(self) -> ServiceState:
        result = self._systemctl("show", UNIT, "--property=ActiveState,SubState,MainPID")
        values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        active, sub = values.get("ActiveState", "unknown"), values.get("SubState", "")
        pid = int(values["MainPID"]) if values.get("MainPID", "0").isdigit() and values["MainPID"] != "0" else None
        return ServiceState(running=active == "active" and sub == "running", pid=pid, detail=f"{active} ({sub})" if sub else active)

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=60)
