"""Errors the registry raises: each is a `UserError` whose one line says what happened,
to which model or file, and what to do next."""

from __future__ import annotations

from localllm.errors import UserError


class ModelNotFoundError(UserError):
    """A name that is neither pulled, nor in the catalog, nor on the hub."""


class InvalidModelNameError(UserError):
    """A name that cannot be a model name (bad characters, empty tag, ...)."""


class HubAccessError(UserError):
    """The hub refused us: gated or private repository, bad token."""


class HubUnavailableError(UserError):
    """The hub could not be reached or kept failing after retries."""


class DigestMismatchError(UserError):
    """A downloaded file's sha256 differs from what the hub announced."""


class InsufficientDiskError(UserError):
    """Not enough free disk space for what a pull or import must write."""


class PullCancelled(UserError):
    """A pull stopped on request; its partial download is kept for the next pull."""

    exit_code = 130
