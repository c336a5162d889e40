"""What the registry hands to frontends: pulled models, their details, pull progress.

Plain dataclasses with no behaviour, so the CLI, the server and the chat app can show
them without importing anything else from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PULL_STATUSES = ("resolving", "downloading", "verifying", "writing manifest", "success")


@dataclass(frozen=True)
class ModelEntry:
    """One pulled or imported model, as `localllm list` shows it."""

    name: str  # "name:tag"
    path: Path  # what a backend loads (a GGUF file, or a folder for MLX)
    size_bytes: int
    quant: str
    format: str  # "gguf" | "mlx"
    modified: float  # unix time the manifest was written
    digest: str  # sha256 hex: of the GGUF file (its first part when split); of the manifest for MLX


@dataclass(frozen=True)
class ModelDetails(ModelEntry):
    """`localllm show`: the entry plus what the model file says about itself."""

    architecture: str
    parameters: int  # 0 when unknown
    context_length: int  # 0 when unknown
    has_chat_template: bool
    license: str | None
    chat_template: str | None
    defaults: dict = field(default_factory=dict)  # a created model's own settings (Modelfile)


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull. While downloading, `digest`, `total` and `completed` are the
    file being fetched (completed counts bytes already on disk, resumed ones included)."""

    status: str  # one of PULL_STATUSES
    digest: str | None = None  # sha256 hex of the file, when known
    total: int | None = None
    completed: int | None = None
    file: str | None = None  # the file's name in its repo, for display
    detail: str | None = None  # a note worth showing, such as a retry after a dropped connection
