"""macOS: a launchd agent in ~/Library/LaunchAgents, run in the user's GUI session.

`RunAtLoad` starts it at login; `KeepAlive` with `SuccessfulExit: false` restarts it when
it crashes or exits with an error, not when it was stopped on purpose. launchctl's
modern verbs (bootstrap / bootout / print on the `gui/<uid>` domain) need a logged-in
GUI session: over plain SSH there is none, and we say so.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
from pathlib import Path

from localllm.service import LABEL, ServiceSpec, ServiceState, home, port_in_args

THROTTLE_S = 5  # the least time between two restarts


class LaunchAgent:
    name = "launchd"

    def __init__(self):
        self.domain = f"gui/{os.getuid()}"

    def unit_path(self) -> Path:
        return home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"

    def render(self, spec: ServiceSpec) -> bytes:
        agent = {
            "Label": LABEL,
            "ProgramArguments": list(spec.program),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": THROTTLE_S,
            "ProcessType": "Interactive",  # an editor waits on it: no background throttling
            "StandardOutPath": str(spec.log_file),
            "StandardErrorPath": str(spec.log_file),
        }
        if spec.environment:
            agent["EnvironmentVariables"] = dict(spec.environment)
        return plistlib.dumps(agent)

    def read_port(self, unit: bytes) -> int | None:
        try:
            return port_in_args([str(a) for a in plistlib.loads(unit).get("ProgramArguments", [])])
        except (plistlib.InvalidFileException, ValueError, AttributeError):
            return None

    def session_problem(self) -> str | None:
        if shutil.which("launchctl") is None:
            return "launchctl is not on this machine (launch agents need macOS)"
        result = self._launchctl("print", self.domain)
        if result.returncode != 0:
            return (f"no launchd GUI session for this user ({self.domain}: {_first_line(result)}); "
                    f"log in at the Mac itself")
        return None

    def login_links(self) -> list[tuple[Path, str]]:
        return []  # launchd loads every agent in ~/Library/LaunchAgents at login

    def start(self) -> None:
        if self._launchctl("print", f"{self.domain}/{LABEL}").returncode == 0:
            self._launchctl("bootout", f"{self.domain}/{LABEL}")  # reload a changed plist
        self._launchctl("enable", f"{self.domain}/{LABEL}")  # undo an earlier `launchctl disable`
        result = self._launchctl("bootstrap", self.domain, str(self.unit_path()))
        if result.returncode != 0:
            raise RuntimeError(f"launchctl bootstrap {self.domain} {self.unit_path()} failed: {_first_line(result)}")

    def stop(self) -> None:
        self._launchctl("bootout", f"{self.domain}/{LABEL}")  # fails harmlessly when not loaded

    def forget(self) -> None:
        pass  # bootout already unloaded it: launchd keeps nothing of a removed agent

    def state(self) -> ServiceState:
        result = self._launchctl("print", f"{self.domain}/{LABEL}")
        if result.returncode != 0:
            return ServiceState(running=False, detail="not loaded")
        state = re.search(r"^\s*state = (.+)$", result.stdout, re.M)
        pid = re.search(r"^\s*pid = (\d+)$", result.stdout, re.M)
        detail = state.group(1).strip() if state else "loaded"
        return ServiceState(running=detail == "running", pid=int(pid.group(1)) if pid else None, detail=detail)

    def _launchctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["launchctl", *args], capture_output=True, text=True, timeout=30)


def _first_line(result: subprocess.CompletedProcess) -> str:
    text = (result.stderr or result.stdout).strip()
    return text.splitlines()[0] if text else f"exit code {result.returncode}"
