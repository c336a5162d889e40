"""`localllm service install|uninstall|status|logs`: run `localllm serve` in the background
at login, as the user (no root), through launchd on macOS or systemd on Linux.

The managers themselves live in `localllm/service/`; this module is the command line:
checks, the order of file writes and manager calls, and what is printed. Where the
user's service manager cannot be reached (no GUI session on macOS, no systemd user
session on Linux) every subcommand says so and exits 2, unless --files-only asks for
the files alone.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from localllm.errors import UserError
from localllm.server import DEFAULT_HOST, DEFAULT_PORT

EXIT_NOT_RUNNING = 3  # `status`: installed but not running, or not installed (as systemctl's is-active)
# `localllm serve` flags the service cannot take: it always listens on 127.0.0.1, and an
# API key would sit in a world-readable unit file.
REFUSED_SERVE_FLAGS = ("--host", "--api-key", "--port")


class ServiceError(UserError):
    """The service manager refused a request it had accepted the session for."""

    exit_code = 1


def configure(sub) -> None:
    p = sub.add_parser(
        "service", help="run the local API server in the background at login",
        description=("Run `localllm serve` in the background whenever you are logged in, without root: a launchd "
                     "agent on macOS, a systemd user unit on Linux. Logs go to the user log folder. Homebrew "
                     "users can use `brew services start localllm` instead."),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help, description=help)
        a.add_argument("--files-only", action="store_true",
                       help="only write, remove or read the service's files; do not ask launchctl/systemctl "
                            "anything (to prepare a home without a user session)")
        a.add_argument("--manager", choices=("launchd", "systemd"),
                       help="whose files to write (default: this system's: launchd on macOS, systemd on Linux)")
        a.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")
        return a

    install = action("install", "install and start the background server (again: update it)")
    install.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port on {DEFAULT_HOST} (default: {DEFAULT_PORT})")
    install.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="-- SERVE_FLAGS",
                         help="more `localllm serve` flags after --, e.g. -- --model llama3.2:1b --keep-alive 30m")
    install.set_defaults(handler=install_command)
    action("uninstall", "stop the background server and remove its files and logs").set_defaults(handler=uninstall_command)
    action("status", f"say whether it runs and on which port (exit {EXIT_NOT_RUNNING} when it does not)").set_defaults(
        handler=status_command)
    logs = action("logs", "print the end of the server's log")
    logs.add_argument("-n", "--lines", type=int, default=50, metavar="N", help="how many lines (default: 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what is appended, until Ctrl-C")
    logs.set_defaults(handler=logs_command)


def _manager(args):
    from localllm.service import select_manager

    manager = select_manager(args.manager)
    if not args.files_only:
        problem = manager.session_problem()
        if problem:
            alone = {"install": "write the files now (it then starts at your next login)",
                     "uninstall": "remove the files alone", "status": "read the files alone"}[args.action]
            raise UserError(f"{problem}. Run `localllm serve` in a terminal instead, or {alone} with "
                            f"`localllm service {args.action} --files-only`")
    return manager


def _check_serve_args(serve_args: list[str]) -> list[str]:
    """The extra `serve` flags, checked by serve's own parser now rather than by a
    service that would fail at every start."""
    from localllm.cli import build_parser

    serve_args = serve_args[1:] if serve_args[:1] == ["--"] else serve_args
    for arg in serve_args:
        if arg.split("=", 1)[0] in REFUSED_SERVE_FLAGS:
            raise UserError(f"{arg.split('=', 1)[0]} cannot be given to the service: it listens on {DEFAULT_HOST} "
                            f"(use `localllm service install --port N` for the port)")
    build_parser().parse_args(["serve", *serve_args])  # a bad flag: argparse's message, exit 2
    return serve_args


def install_command(args) -> int:
    from localllm.service import LOG_NAME, MANIFEST_NAME, InstallManifest, build_spec, log_dir, missing_dirs

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: choose a port between 1 and 65535")
    serve_args = _check_serve_args(args.serve_args)
    manager = _manager(args)
    unit_text = manager.render(build_spec(args.port, serve_args))  # may refuse: before anything is written
    unit, logs = manager.unit_path(), log_dir()
    links = manager.login_links()
    created = missing_dirs(unit.parent) + missing_dirs(logs) + [d for link, _ in links for d in missing_dirs(link.parent)]
    created = list(dict.fromkeys(created))  # HOME itself may be missing from several chains
    unit.parent.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    InstallManifest(logs / MANIFEST_NAME).record(created)
    partial = unit.with_name(unit.name + ".partial")
    partial.write_bytes(unit_text)
    os.replace(partial, unit)
    print(f"localllm service: wrote {unit}")
    if args.files_only:
        for link, target in links:
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        print("localllm service: not started (--files-only); it starts at your next login")
        return 0
    try:
        manager.start()
    except RuntimeError as e:
        raise ServiceError(f"{e} (the unit is in place; `localllm service uninstall` removes it)") from None
    print(f"localllm service: started; serving on http://{DEFAULT_HOST}:{args.port} at every login "
          f"(log: {logs / LOG_NAME}; `localllm service status` says whether it answers)")
    return 0


def uninstall_command(args) -> int:
    from localllm.service import (
        LOG_NAME, MANAGERS, MANIFEST_NAME, InstallManifest, log_dir, remove_empty_dirs, select_manager,
    )

    manager = _manager(args)
    unit, logs = manager.unit_path(), log_dir()
    manifest = InstallManifest(logs / MANIFEST_NAME)
    # The log folder and the manifest are shared with the other manager's files, should
    # --manager have written those too: the last uninstall removes them.
    others = [name for name in MANAGERS if name != manager.name and select_manager(name).unit_path().exists()]
    if not unit.exists() and (others or not manifest.path.exists()):
        print("localllm service: not installed; nothing to remove")
        return 0
    if not args.files_only:
        manager.stop()
    unit.unlink(missing_ok=True)
    for link, _ in manager.login_links():
        if link.is_symlink():
            link.unlink()
    if not args.files_only:
        manager.forget()
    if others:
        print(f"localllm service: removed {unit}; the log folder stays for the {others[0]} unit")
        return 0
    created = manifest.created_dirs()
    for path in (logs / LOG_NAME, manifest.path):
        path.unlink(missing_ok=True)
    remove_empty_dirs(created)
    print(f"localllm service: removed {unit} and its logs")
    return 0


def probe(port: int) -> str | None:
    """The version of the localllm answering on 127.0.0.1:port, or None."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{DEFAULT_HOST}:{port}/health", timeout=2) as response:
            body = json.load(response)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return str(body.get("version")) if isinstance(body, dict) and body.get("status") == "ok" else None


def status_command(args) -> int:
    from localllm.service import LOG_NAME, log_dir

    manager = _manager(args)
    unit = manager.unit_path()
    if not unit.exists():
        print(f"localllm service: not installed (no {unit}; `localllm service install` sets it up)")
        return EXIT_NOT_RUNNING
    port = manager.read_port(unit.read_bytes()) or DEFAULT_PORT
    state = None if args.files_only else manager.state()
    version = probe(port)
    endpoint = f"http://{DEFAULT_HOST}:{port}"
    print(f"localllm service: installed ({manager.name}: {unit})")
    if state is not None:
        pid = f", pid {state.pid}" if state.pid else ""
        print(f"state: {'running' if state.running else 'not running'} ({state.detail}{pid})")
    print(f"endpoint: {endpoint} ({f'answering, localllm {version}' if version else 'not answering'})")
    print(f"log: {log_dir() / LOG_NAME}")
    running = state.running if state is not None else version is not None
    return 0 if running else EXIT_NOT_RUNNING


def logs_command(args) -> int:
    from localllm.service import LOG_NAME, log_dir

    if args.lines < 0:
        raise UserError(f"--lines {args.lines}: give 0 or more")
    path = log_dir() / LOG_NAME
    if not path.exists():
        print(f"localllm service: no log yet at {path} (is it installed? `localllm service status`)", file=sys.stderr)
        return 0
    with path.open("rb") as f:
        sys.stdout.write(b"".join(tail_lines(f, args.lines)).decode(errors="replace"))
        sys.stdout.flush()
        while args.follow:  # until Ctrl-C (exit 130)
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def tail_lines(f, n: int, block: int = 8192) -> list[bytes]:
    """The last `n` lines of a binary file, reading backwards only as far as needed;
    leaves the file positioned at its end."""
    end = f.seek(0, os.SEEK_END)
    data, pos = b"", end
    while pos > 0 and data.count(b"\n") <= n:
        pos = max(0, pos - block)
        f.seek(pos)
        data = f.read(end - pos)
    f.seek(end)
    lines = data.splitlines(keepends=True)
    return lines[-n:] if n else []
