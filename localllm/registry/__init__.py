"""Model registry: names, the content-addressed store, pulls from the Hugging Face hub,
and the curated catalog. This is the API frontends use:

    resolve_model_path(name, settings) -> Path        name, hf.co/owner/repo[:quant], or a path
    resolve_model(name, settings) -> ResolvedModel    the path, full name and a created model's defaults
    create_model(name, modelfile, settings) / copy_model(src, dst, settings) -> Written
    list_models(settings) -> list[ModelEntry]
    show_model(name, settings) -> ModelDetails
    remove_model(name, settings) -> None              frees the blobs no other model uses
    pull_model(name, settings, on_progress=None, cancel=None) -> ModelEntry
    import_model(path, name, settings) -> ModelEntry

Every failure a user can fix is a `UserError` saying what to do. The HTTP client
(httpx) is imported only when a pull starts.
"""

from __future__ import annotations

import threading
from typing import Callable

from localllm.registry.entries import ModelDetails, ModelEntry, PullProgress
from localllm.registry.errors import (
    DigestMismatchError, HubAccessError, HubUnavailableError, InsufficientDiskError, InvalidModelNameError,
    ModelNotFoundError, PullCancelled,
)
from localllm.registry.inventory import (
    delete_model, import_model, list_models, list_models_described, remove_model, show_model, stored_digest,
)
from localllm.registry.lookup import ResolvedModel, resolve_model, resolve_model_path


def create_model(name: str, modelfile, settings, base_dir=None):
    """Make `name` from a parsed Modelfile (see `localllm.registry.create`)."""
    from localllm.registry.create import create_model as create

    return create(name, modelfile, settings, base_dir)


def copy_model(source: str, destination: str, settings):
    """`source` under another name (see `localllm.registry.create`)."""
    from localllm.registry.create import copy_model as copy

    return copy(source, destination, settings)


def pull_model(
    name: str,
    settings,
    on_progress: Callable[[PullProgress], None] | None = None,
    cancel: threading.Event | None = None,
    **options,
) -> ModelEntry:
    """Pull `name` (see `localllm.registry.pull.pull_model` for the options)."""
    from localllm.registry.pull import pull_model as pull

    return pull(name, settings, on_progress=on_progress, cancel=cancel, **options)


__all__ = [
    "copy_model", "create_model",
    "DigestMismatchError", "HubAccessError", "HubUnavailableError", "InsufficientDiskError", "InvalidModelNameError",
    "ModelDetails", "ModelEntry", "ModelNotFoundError", "PullCancelled", "PullProgress",
    "delete_model", "import_model", "list_models", "pull_model", "remove_model", "resolve_model", "ResolvedModel", "resolve_model_path", "show_model",
    "stored_digest", "list_models_described",
]
