"""The engine: one inference thread, a request queue, the generation loop and sampling."""

from localllm.engine.engine import Engine, RequestHandle
from localllm.engine.generate import generate

__all__ = ["Engine", "RequestHandle", "generate"]
