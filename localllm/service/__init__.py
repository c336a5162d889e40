"""The background service: `localllm serve` started at login by the user's own service
manager, without root: a launchd agent on macOS (`launchd.py`), a systemd user unit on
Linux (`systemd.py`). Both render the same `ServiceSpec` and answer the same questions
(is there a session to talk to, start, stop, what state), so the command in
`localllm/commands/service.py` does not care which one it drives.

Every path comes from the home folder (`HOME`) and platformdirs, so pointing HOME (and
the XDG variables) at a temporary folder moves everything the service writes; the
command's --files-only writes and removes the files without asking launchctl or
systemctl anything (a home prepared for later, a machine without a user session, tests).

Install records the folders it had to create in a small manifest beside the log, so that
uninstall removes exactly what install added and nothing that was there before.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from localllm.errors import UserError

MANAGERS = ("launchd", "systemd")
LABEL = "localllm.serve"  # launchd label; the systemd unit is localllm.service
LOG_NAME = "serve.log"
MANIFEST_NAME = "service-install.json"
# Settings the service inherits from the shell that installs it (the user's settings);
# the API key is a secret and test-only variables are not settings.
INHERITED_ENV = re.compile(r"LOCALLLM_(?!API_KEY$|TEST_)\w+")


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs and where it writes, whichever manager runs it."""

    program: tuple[str, ...]  # the full command line of `localllm serve`
    port: int
    log_file: Path
    environment: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceState:
    running: bool
    pid: int | None = None
    detail: str = ""  # the manager's own words, e.g. "active (running)", "not loaded"


class ServiceManager(Protocol):
    """A per-user service manager: launchd or systemd."""

    name: str  # "launchd" or "systemd"

    def unit_path(self) -> Path: ...

    def render(self, spec: ServiceSpec) -> bytes: ...

    def read_port(self, unit: bytes) -> int | None: ...

    def session_problem(self) -> str | None:
        """None when the manager's user session can be reached, else why not (one line)."""

    def login_links(self) -> list[tuple[Path, str]]:
        """(link, target) pairs that make the service start at login without asking the
        manager (systemd's `enable` symlink): --files-only writes them, uninstall removes them."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def forget(self) -> None:
        """After the unit file is removed: make the manager drop what it knew of it."""

    def state(self) -> ServiceState: ...


def home() -> Path:
    return Path.home()


def log_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir("localllm", appauthor=False))


def stable_interpreter(executable: str) -> str:
    """The interpreter path to write into the unit. A Homebrew keg's path names the
    version (…/Cellar/localllm/0.1.0/…) and disappears on upgrade; its `opt` link stays."""
    return re.sub(r"/Cellar/localllm/[^/]+/", "/opt/localllm/", executable)


def build_spec(port: int, serve_args: list[str]) -> ServiceSpec:
    program = (stable_interpreter(sys.executable), "-m", "localllm", "serve", "--port", str(port), *serve_args)
    environment = {k: v for k, v in sorted(os.environ.items()) if INHERITED_ENV.fullmatch(k)}
    return ServiceSpec(program=program, port=port, log_file=log_dir() / LOG_NAME, environment=environment)


def select_manager(name: str | None = None) -> ServiceManager:
    """The manager for `name` ("launchd", "systemd"), or this platform's when None."""
    from localllm.service.launchd import LaunchAgent
    from localllm.service.systemd import SystemdUserUnit

    if name is None:
        if sys.platform == "darwin":
            name = "launchd"
        elif sys.platform.startswith("linux"):
            name = "systemd"
        else:
            raise UserError(f"no launchd or systemd on {sys.platform}: run `localllm serve` yourself "
                            f"(or keep it running with your system's own service manager)")
    return {"launchd": LaunchAgent, "systemd": SystemdUserUnit}[name]()


def port_in_args(args: list[str]) -> int | None:
    """The value of `--port` in a `localllm serve` command line."""
    for flag, value in zip(args, args[1:]):
        if flag == "--port" and value.isdigit():
            return int(value)
    return None


class InstallManifest:
    """The folders install created (deepest last) and the files it wrote, kept in the log
    folder so uninstall can put the home back as it found it."""

    def __init__(self, path: Path):
        self.path = path

    def created_dirs(self) -> list[Path]:
        try:
            return [Path(p) for p in json.loads(self.path.read_text())["created_dirs"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def record(self, dirs: list[Path]) -> None:
        known = self.created_dirs()
        merged = known + [d for d in dirs if d not in known]
        self.path.write_text(json.dumps({"created_dirs": [str(d) for d in merged]}, indent=1) + "\n")


def missing_dirs(path: Path) -> list[Path]:
    """The folders `path.mkdir(parents=True)` would create, outermost first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing[::-1]


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove each folder that is empty, deepest first; a folder holding anything stays."""
    for folder in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (something else lives there now) or already gone
