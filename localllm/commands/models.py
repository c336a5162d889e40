"""`localllm pull | list | show | rm | import`: manage the models on this machine.

Progress of a pull goes to stderr: a rich progress bar (bytes, rate, ETA) on a terminal,
plain lines otherwise (logs, pipes, CI). The registry is imported only inside handlers,
so building the parser stays cheap.
"""

from __future__ import annotations

import json
import sys
import time

from localllm.errors import UserError


def configure(sub) -> None:
    pull = sub.add_parser("pull", help="download a model", description=(
        "Download a model into the local store: a catalog name such as llama3.2:1b, or any "
        "Hugging Face GGUF repo as hf.co/owner/repo[:quant] (default quant Q4_K_M). "
        "Interrupted pulls resume where they stopped."))
    pull.add_argument("model", metavar="NAME")
    pull.add_argument("--format", choices=("auto", "gguf", "mlx"), default="auto",
                      help="which variant to fetch (default: the one the backend in use loads)")
    _debug_flag(pull)
    pull.set_defaults(handler=pull_command)

    ls = sub.add_parser("list", aliases=["ls"], help="list pulled models", description="List the models in the local store.")
    ls.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    _debug_flag(ls)
    ls.set_defaults(handler=list_command)

    show = sub.add_parser("show", help="describe a model", description="Show what a pulled model or a GGUF file is: architecture, size, quant, context, licence, path.")
    show.add_argument("model", metavar="NAME", help="a pulled model's name, or the path of a GGUF file")
    show.add_argument("--template", action="store_true", help="print only the chat template")
    show.add_argument("--modelfile", action="store_true", help="print a Modelfile that `create` turns back into this model")
    show.add_argument("--parameters", action="store_true", help="print only a created model's parameters")
    show.add_argument("--json", action="store_true", help="one JSON object")
    _debug_flag(show)
    show.set_defaults(handler=show_command)

    rm = sub.add_parser("rm", help="remove pulled models", description="Remove models and free the files no other model uses.")
    rm.add_argument("models", metavar="NAME", nargs="+")
    _debug_flag(rm)
    rm.set_defaults(handler=rm_command)

    imp = sub.add_parser("import", help="add a local GGUF file to the store", description=(
        "Copy a local GGUF file into the store under a name, so `run NAME` finds it. The file itself is left alone."))
    imp.add_argument("path", metavar="PATH")
    imp.add_argument("--name", required=True, metavar="NAME[:TAG]", help="the name to give it (tag: latest when omitted)")
    _debug_flag(imp)
    imp.set_defaults(handler=import_command)


def _debug_flag(p) -> None:
    p.add_argument("--debug", action="store_true", default=None, help="show tracebacks for errors")


def _settings():
    from localllm.config import load_settings

    return load_settings()


def _size(n: int) -> str:
    from localllm.registry.diskspace import human_bytes

    return human_bytes(n)


def pull_command(args) -> int:
    from localllm.registry import pull_model

    settings = _settings()
    display = BarDisplay(args.model) if sys.stderr.isatty() else LineDisplay(args.model)
    try:
        entry = pull_model(args.model, settings, on_progress=display,
                           prefer_format=None if args.format == "auto" else args.format)
    except KeyboardInterrupt:
        display.close()
        print(f"\npull interrupted: what was downloaded is kept; run `localllm pull {args.model}` to resume", file=sys.stderr)
        raise
    finally:
        display.close()
    quant = f"{entry.quant} " if entry.quant else ""
    print(f"success: {entry.name} ({_size(entry.size_bytes)}, {quant}{entry.format})")
    return 0


class LineDisplay:
    """Plain progress lines: a line per phase and per 10% of each file."""

    def __init__(self, name: str, out=None):
        self.name, self.out = name, out or sys.stderr
        self.files: dict[str, tuple[int, float, int]] = {}  # file -> (last decile, start time, start bytes)
        self.last_status = None

    def __call__(self, p) -> None:
        if p.detail:
            self._say(f"  {p.file or p.status}: {p.detail}")
        if p.status == "downloading" and p.total:
            key = p.file or p.digest or "?"
            done = p.completed or 0
            if key not in self.files:
                if done >= p.total:
                    self._say(f"{key} ({_size(p.total)}) is already in the store")
                else:
                    resumed = f", resuming at {_size(done)}" if done else ""
                    self._say(f"downloading {key} ({_size(p.total)}{resumed})")
                self.files[key] = (done * 10 // p.total, time.monotonic(), done)
                return
            decile, t0, b0 = self.files[key]
            now_decile = done * 10 // p.total
            if now_decile > decile:
                rate = (done - b0) / max(1e-6, time.monotonic() - t0)
                self._say(f"  {key}: {now_decile * 10}% ({_size(done)} of {_size(p.total)}, {_size(int(rate))}/s)")
                self.files[key] = (now_decile, t0, b0)
        elif p.status != self.last_status and p.status != "success":
            detail = f" {p.file}" if p.status == "verifying" and p.file else ""
            self._say(f"{p.status}{detail}" if p.status != "resolving" else f"resolving {self.name}")
        self.last_status = p.status

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        pass


class BarDisplay:
    """A rich progress bar per file: bytes, rate and time left, all in binary units
    (MiB and MiB/s, as `list` and `show` print sizes)."""

    def __init__(self, name: str, console=None):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self.name = name
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), _binary_speed_column(),
            TimeRemainingColumn(), console=console or Console(stderr=True), transient=False,
        )
        self.tasks: dict[str, int] = {}
        self.last_status = None
        self.progress.start()

    def __call__(self, p) -> None:
        if p.detail:
            self.progress.console.print(f"{p.file or p.status}: {p.detail}")
        if p.status == "downloading" and p.total:
            key = p.file or p.digest or "?"
            if key not in self.tasks:  # a resumed start is not counted as speed
                self.tasks[key] = self.progress.add_task(key, total=p.total, completed=p.completed or 0)
            else:
                self.progress.update(self.tasks[key], completed=p.completed or 0)
        elif p.status != self.last_status and p.status not in ("success", "downloading"):
            self.progress.console.print(f"{p.status} {self.name}" if p.status == "resolving" else p.status)
        self.last_status = p.status

    def close(self) -> None:
        self.progress.stop()


def _binary_speed_column():
    """rich's TransferSpeedColumn speaks MB/s next to DownloadColumn's MiB; this one
    says MiB/s."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{_size(int(speed))}/s", style="progress.data.speed")

    return BinarySpeedColumn()


def list_command(args) -> int:
    from localllm.registry import list_models

    entries = list_models(_settings())
    if args.json:
        print(json.dumps([_entry_json(e) for e in entries], indent=2))
        return 0
    if not entries:
        print("no models yet: pull one, for example `localllm pull llama3.2:1b`", file=sys.stderr)
        return 0
    rows = [("NAME", "SIZE", "QUANT", "FORMAT", "MODIFIED")]
    rows += [(e.name, _size(e.size_bytes), e.quant or "-", e.format, _ago(e.modified)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _entry_json(e) -> dict:
    d = dict(vars(e))
    d["path"] = str(e.path)
    return d


def span_words(seconds: float, smallest: str = "minute") -> str | None:
    """'3 hours', '1 minute': the largest whole unit, down to `smallest`; None below it."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    for unit, n in units[: [u for u, _ in units].index(smallest) + 1]:
        if seconds >= n:
            k = int(seconds // n)
            return f"{k} {unit}{'s' if k > 1 else ''}"
    return None


def _ago(t: float) -> str:
    span = span_words(max(0.0, time.time() - t))
    return f"{span} ago" if span else "just now"


def show_command(args) -> int:
    from localllm.registry import show_model

    d = show_model(args.model, _settings())
    if args.template:
        if d.chat_template is None:
            raise UserError(f"{d.name} has no chat template: it continues prompts as written "
                            "(give one with `run --chat-template FILE`)")
        print(d.chat_template)
        return 0
    if args.modelfile:
        from localllm.registry.modelfile import ModelDefaults, render_modelfile

        print(render_modelfile(str(d.path), ModelDefaults.from_json(d.defaults), d.license), end="")
        return 0
    if args.parameters:
        for name, value in d.defaults.get("parameters", {}).items():
            for item in value if isinstance(value, list) else [value]:
                print(f"{name:<20} {json.dumps(item) if isinstance(item, str) else item}")
        return 0
    if args.json:
        print(json.dumps(_entry_json(d), indent=2))
        return 0
    rows = [
        ("name", d.name), ("architecture", d.architecture or "unknown"),
        ("parameters", _count(d.parameters)), ("quantization", d.quant or "-"),
        ("context length", str(d.context_length) if d.context_length else "unknown"),
        ("chat template", "yes" if d.has_chat_template else "no (plain completion prompts)"),
        ("licence", d.license or "unknown"), ("format", d.format), ("size", _size(d.size_bytes)),
        ("path", str(d.path)),
    ] + ([("digest", f"sha256:{d.digest}")] if d.digest else [])
    defaults = d.defaults
    for name, value in defaults.get("parameters", {}).items():
        rows.append((f"parameter {name}", json.dumps(value) if not isinstance(value, (int, float)) else str(value)))
    if defaults.get("system"):
        rows.append(("system", _one_line(defaults["system"])))
    if defaults.get("template"):
        rows.append(("template", "its own (show --modelfile prints it)"))
    if defaults.get("messages"):
        rows.append(("messages", str(len(defaults["messages"]))))
    for key, value in rows:
        print(f"  {key:<15} {value}")
    return 0


def _one_line(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _count(n: int) -> str:
    if not n:
        return "unknown"
    for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.2f}{unit}".replace(".00", "")
    return str(n)


def rm_command(args) -> int:
    from localllm.registry import delete_model

    settings = _settings()
    for name in args.models:
        removal = delete_model(name, settings)
        freed = (f"freed {_size(removal.freed_bytes)}" if removal.freed_bytes is not None
                 else "its files are freed by the next `rm` once the running pull ends")
        print(f"removed {', '.join(removal.names)}; {freed}")
    return 0


def import_command(args) -> int:
    from localllm.registry import import_model, stored_digest

    settings = _settings()
    before = stored_digest(args.name, settings)
    entry = import_model(args.path, args.name, settings)
    quant = f", {entry.quant}" if entry.quant else ""
    print(f"imported {args.path} as {entry.name} ({_size(entry.size_bytes)}{quant}): `localllm run {entry.name}`")
    if before is not None and before != entry.digest:
        print(f"{entry.name} named another model before (sha256:{before[:12]}); that name now means this file",
              file=sys.stderr)
    return 0
