"""Model registry: names, the content-addressed store, pulls, and the catalog."""

from __future__ import annotations

from pathlib import Path

from localllm.errors import ModelFileError


def resolve_model_path(name: str, settings) -> Path:
    """A model name (`llama3.2:1b`, `hf.co/owner/repo:Q4_K_M`) or a local GGUF path, to
    the file to load. Raises a UserError naming what to do when nothing matches."""
    path = Path(name).expanduser()
    if path.exists() or name.endswith(".gguf") or "/" in name:
        return path
    raise ModelFileError(f"{name}: no such model file")
