"""Manifests: the record that a name:tag is on this machine, and which blobs make it.

One JSON file per name, tag and format, written last in a pull (after every blob is
verified and admitted), atomically: a temp file in the same folder, fsync, `os.replace`.
A reader therefore sees either no manifest or a whole one, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from localllm.registry.names import ModelName

SCHEMA = 1
FORMATS = ("gguf", "mlx")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a model: its name in the source repo and the blob holding it."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str  # "llama3.2", "hf.co/owner/repo", "mine"
    tag: str
    format: str  # "gguf" | "mlx"
    files: tuple[ManifestFile, ...]
    quant: str = ""
    license: str | None = None
    source: dict = field(default_factory=dict)  # {"kind": "hub", "endpoint", "repo", "revision"} | {"kind": "import", "path"}
    created: float = 0.0
    # A created model's own settings (`localllm.registry.modelfile.ModelDefaults.to_json`).
    defaults: dict = field(default_factory=dict)

    @property
    def model_name(self) -> ModelName:
        return ModelName(self.name, self.tag)

    @property
    def full_name(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def primary(self) -> ManifestFile:
        """The file to load: the GGUF (its first part when split); for MLX, the first file."""
        return self.files[0]

    @property
    def needs_snapshot(self) -> bool:
        """Whether loading needs the files under their repo names (MLX, split GGUF)."""
        return self.format == "mlx" or len(self.files) > 1

    def to_json(self) -> str:
        data = asdict(self)
        data["schema"] = SCHEMA
        data["files"] = [asdict(f) for f in self.files]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise ValueError(f"manifest schema {data.get('schema')!r} is not {SCHEMA}")
        files = tuple(ManifestFile(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in data["files"])
        if any(not re.fullmatch(r"[0-9a-f]{64}", f.sha256) for f in files):
            raise ValueError("manifest names a blob by something other than a sha256")
        if not files or data["format"] not in FORMATS:
            raise ValueError("manifest lists no files or an unknown format")
        return cls(
            name=str(data["name"]), tag=str(data["tag"]), format=str(data["format"]), files=files,
            quant=str(data.get("quant") or ""), license=data.get("license"),
            source=dict(data.get("source") or {}), created=float(data.get("created") or 0.0),
            defaults=dict(data.get("defaults") or {}),
        )


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
