"""Error classes that reach the user.

A `UserError` carries one line saying what happened, to what, and what to do next; the
CLI prints it without a traceback and exits with its `exit_code` (2: bad input or a
file we cannot use). Anything else that escapes is an internal error (exit 1).
"""


class UserError(Exception):
    """A problem the user can fix; its message is the whole story, in one line."""

    exit_code = 2


class ModelFileError(UserError):
    """A model file is missing, not GGUF, truncated, corrupted or of an unsupported kind."""


class ContextOverflowError(UserError):
    """The prompt (plus what must be generated) does not fit the context window."""


class BackendUnavailableError(UserError):
    """The chosen backend cannot run on this machine or is not built yet."""


class GenerationCancelled(Exception):
    """Raised inside the engine thread when a request was cancelled; never reaches users."""
