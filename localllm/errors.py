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
    """The prompt, plus the room kept for the reply, does not fit the context window.

    The numbers are fields, for frontends to word in their own terms (a request field, a
    chat app's settings): `prompt_tokens`, `limit` (the context's tokens) and `reserve`
    (tokens kept for the reply; 1 when only the next token must fit). The message is the
    command line's wording, with `advice` as what to do.
    """

    def __init__(self, prompt_tokens: int, limit: int, reserve: int = 1,
                 advice: str = "shorten the prompt or raise --ctx-size"):
        self.prompt_tokens, self.limit, self.reserve, self.advice = prompt_tokens, limit, reserve, advice
        if reserve > 1:
            numbers = f"the prompt has {prompt_tokens} tokens plus {reserve} kept for the reply, but the context holds {limit}"
        else:
            numbers = f"the prompt has {prompt_tokens} tokens but the context holds {limit}"
        super().__init__(f"{numbers}: {advice}")

    def __reduce__(self):  # rebuilt from its fields (pickling, copying)
        return type(self), (self.prompt_tokens, self.limit, self.reserve, self.advice)


class BackendUnavailableError(UserError):
    """The chosen backend cannot run on this machine or is not built yet."""


class GenerationCancelled(Exception):
    """Raised inside the engine thread when a request was cancelled; never reaches users."""
