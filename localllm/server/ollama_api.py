"""Ollama's generation shapes: `POST /api/chat` and `POST /api/generate`.

Streaming is on unless `"stream": false`, one JSON object per line (NDJSON); the last
object has `done: true`, `done_reason` and Ollama's timings in nanoseconds
(total_duration, load_duration, prompt_eval_count/_duration, eval_count/_duration).
`options` carries sampling (temperature, top_k, top_p, min_p, repeat_penalty,
repeat_last_n, presence/frequency_penalty, seed, stop, num_predict) over a created
model's own PARAMETERs; `num_ctx` loads the model with that context (a separate load when
it differs from the loaded one's, counted against --max-loaded); other load-time options
such as num_thread are server settings here (`--threads`) and are ignored per request. `format` ("json" or a schema) constrains the reply; `tools`
with assistant `tool_calls` and `tool` messages work as in Ollama. An empty prompt (or message list) loads the model, or with
`keep_alive: 0` unloads it, as in Ollama.
"""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from localllm.server.config import DurationError, parse_duration
from localllm.server.drafting import parse_draft
from localllm.server.errors import APIError, BadRequest
from localllm.server.fields import MAX_MESSAGES, Fields, read_json_object
from localllm.server.jobs import ChatPrompt, GenerationJob, GenerationOutcome, InfillPrompt, TextPrompt
from localllm.server import structured_fields
from localllm.server.responses import GenerationResponse
from localllm.toolcalls.parser import ToolCallParser
from localllm.types import Message, SamplingParams

_DEFAULTS = SamplingParams()
_ROLES = ("system", "user", "assistant", "tool")


def created_at(t: float | None = None) -> str:
    """RFC 3339 in UTC with microseconds, as Ollama writes it."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


def ns(seconds: float) -> int:
    return int(max(0.0, seconds) * 1e9)


# -- parsing ------------------------------------------------------------------------------

def parse_keep_alive(f: Fields) -> tuple[float | None, bool]:
    value = f.raw("keep_alive")
    if value is None:
        return None, False
    try:
        return parse_duration(value), True
    except DurationError as e:
        raise BadRequest(f"'keep_alive': {e}", param="keep_alive") from None


def parse_options(f: Fields) -> tuple[SamplingParams, int | None, tuple[str, ...]]:
    o = f.obj("options") or Fields({}, "options.")
    num_predict = o.integer("num_predict", -1, lo=-2)
    if num_predict == 0:
        raise BadRequest("'options.num_predict' must be positive, or -1 for no limit", param="options.num_predict")
    seed = o.integer("seed")
    repeat_last_n = o.integer("repeat_last_n", _DEFAULTS.repeat_last_n, lo=-1)
    penalties = dict(
        repeat_penalty=o.number("repeat_penalty", _DEFAULTS.repeat_penalty, lo=0),
        presence_penalty=o.number("presence_penalty", 0.0),
        frequency_penalty=o.number("frequency_penalty", 0.0),
    )
    if repeat_last_n == 0:  # Ollama and llama.cpp: a window of 0 turns penalties off
        penalties = dict(repeat_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    sampling = SamplingParams(
        temperature=o.number("temperature", _DEFAULTS.temperature, lo=0),
        top_k=o.integer("top_k", _DEFAULTS.top_k, lo=0),
        top_p=o.number("top_p", _DEFAULTS.top_p, lo=0, hi=1),
        min_p=o.number("min_p", _DEFAULTS.min_p, lo=0, hi=1),
        repeat_last_n=0 if repeat_last_n == -1 else repeat_last_n,  # ours: 0 means the whole history
        seed=seed if seed is not None and seed >= 0 else None,  # Ollama: negative means random
        **penalties,
    )
    return sampling, (num_predict if num_predict > 0 else None), o.stops("stop", limit=64)


_SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                     "presence_penalty", "frequency_penalty", "seed")


def options_given(f: Fields) -> tuple[frozenset[str], int | None]:
    """(the options the request set itself, as GenerationJob.given names them; its num_ctx)."""
    o = f.obj("options") or Fields({}, "options.")
    given = {name for name in _SAMPLING_OPTIONS if o.given(name)}
    if o.given("num_predict"):
        given.add("max_tokens")
    if o.given("stop"):
        given.add("stop")
    return frozenset(given), o.integer("num_ctx", lo=16, hi=1 << 20)


def _refuse_unsupported(f: Fields) -> None:
    f.refuse_if_set("think", "this server does not run thinking models' reasoning mode")
    f.refuse_if_set("logprobs", "this server does not return log probabilities")
    f.refuse_if_set("images", "this server runs text-only models")


def parse_messages(items: list) -> tuple[Message, ...]:
    messages = []
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content'")
        m = Fields(item, f"{where}.")
        role = m.text("role", required=True)
        if role not in _ROLES:
            raise BadRequest(f"'{where}.role' is {role!r}: use system, user, assistant or tool")
        m.refuse_if_set("images", "this server runs text-only models")
        calls = structured_fields.history_tool_calls(m) if role == "assistant" else ()
        messages.append(Message(role, m.text("content", ""), tool_calls=calls,
                                name=m.text("tool_name") if role == "tool" else None))
    return tuple(messages)


def _common(f: Fields, api: str, prompt, tools: tuple = ()) -> GenerationJob:
    sampling, max_tokens, stop = parse_options(f)
    keep_alive_s, given = parse_keep_alive(f)
    options, num_ctx = options_given(f)
    return GenerationJob(model=f.text("model", required=True), prompt=prompt, sampling=sampling,
                         max_tokens=max_tokens, max_tokens_param="options.num_predict", stop=stop,
                         keep_alive_s=keep_alive_s, keep_alive_given=given, api=api, given=options,
                         ctx_size=num_ctx, constraint=structured_fields.ollama_format(f), tools=tools,
                         draft=parse_draft(f.obj("options") or Fields({}, "options.")))


# -- rendering ----------------------------------------------------------------------------

def timings(outcome: GenerationOutcome) -> dict:
    s = outcome.stats
    return {
        "total_duration": ns(outcome.total_s),
        "load_duration": ns(outcome.load_s),
        "prompt_eval_count": s.prompt_tokens,
        "prompt_eval_duration": ns(s.prefill_s),
        "eval_count": s.generated_tokens,
        "eval_duration": ns(s.ttft_s - s.prefill_s + s.decode_s),
    }


class _NDJSONRenderer:
    stream_media_type = "application/x-ndjson"
    field = ""

    def __init__(self, model: str):
        self.model = model
        self._model_json = json.dumps(model, ensure_ascii=False)

    def _content(self, text: str):
        raise NotImplementedError

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        return b""

    def stream_piece(self, text: str) -> bytes:
        return (f'{{"model":{self._model_json},"created_at":"{created_at()}","{self.field}":'
                f'{json.dumps(self._content(text), ensure_ascii=False)},"done":false}}\n').encode()

    def _final(self, outcome: GenerationOutcome, text: str) -> dict:
        return {"model": self.model, "created_at": created_at(), self.field: self._content(text), "done": True,
                "done_reason": "length" if outcome.finish_reason == "length" else "stop", **timings(outcome)}

    def stream_tail(self, outcome: GenerationOutcome) -> bytes:
        return (json.dumps(self._final(outcome, ""), ensure_ascii=False) + "\n").encode()

    def stream_error(self, err: APIError) -> bytes:
        return (json.dumps({"error": err.message}, ensure_ascii=False) + "\n").encode()

    def whole(self, outcome: GenerationOutcome) -> dict:
        return self._final(outcome, outcome.text)


class ChatRenderer(_NDJSONRenderer):
    """With tools, the reply goes through the model family's tool-call parser: text as
    `message.content`, each complete call as a line with `message.tool_calls`."""

    field = "message"

    def __init__(self, model: str):
        super().__init__(model)
        self._parser: ToolCallParser | None = None

    def _content(self, text: str):
        return {"role": "assistant", "content": text}

    def _line(self, message: dict) -> bytes:
        return (json.dumps({"model": self.model, "created_at": created_at(), "message": message, "done": False},
                           ensure_ascii=False) + "\n").encode()

    def _events(self, events) -> bytes:
        return b"".join(self._line(self._content(e)) if isinstance(e, str) else
                        self._line({"role": "assistant", "content": "", "tool_calls": [structured_fields.ollama_call(e)]})
                        for e in events)

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        if outcome.tool_format is not None:
            self._parser = ToolCallParser(outcome.tool_format)
        return b""

    def stream_piece(self, text: str) -> bytes:
        if self._parser is None:
            return super().stream_piece(text)
        return self._events(self._parser.feed(text))

    def stream_tail(self, outcome: GenerationOutcome) -> bytes:
        rest = self._events(self._parser.finish()) if self._parser is not None else b""
        return rest + super().stream_tail(outcome)

    def whole(self, outcome: GenerationOutcome) -> dict:
        out = super().whole(outcome)
        if outcome.tool_format is not None:
            text, calls = ToolCallParser(outcome.tool_format).parse(outcome.text)
            if calls:
                out["message"] = {"role": "assistant", "content": text,
                                  "tool_calls": [structured_fields.ollama_call(c) for c in calls]}
        return out


class GenerateRenderer(_NDJSONRenderer):
    field = "response"

    def _content(self, text: str):
        return text


# -- routes -------------------------------------------------------------------------------

async def _load_or_unload(request: Request, f: Fields, field: str, content) -> JSONResponse:
    """Ollama's empty request: load the model (or unload it with keep_alive 0)."""
    server = request.app.state.server
    name = f.text("model", required=True)
    keep_alive_s, given = parse_keep_alive(f)
    if given and keep_alive_s == 0:
        await server.models.unload(name)
        reason = "unload"
    else:
        lease = await server.models.acquire(name, options_given(f)[1])
        lease.release(keep_alive_s, given)
        reason = "load"
    return JSONResponse({"model": name, "created_at": created_at(), field: content, "done": True,
                         "done_reason": reason})


async def chat(request: Request):
    t0 = time.perf_counter()
    f = Fields(await read_json_object(request))
    _refuse_unsupported(f)
    messages = parse_messages(f.array("messages", limit=MAX_MESSAGES) or [])
    if not messages:
        return await _load_or_unload(request, f, "message", {"role": "assistant", "content": ""})
    tools = structured_fields.tools(f)
    job = _common(f, "ollama_chat", ChatPrompt(messages), tools)
    return GenerationResponse(request.app.state.server.service, job, ChatRenderer(job.model),
                              stream=f.flag("stream", True), t_arrival=t0, path=request.url.path)


async def generate(request: Request):
    t0 = time.perf_counter()
    f = Fields(await read_json_object(request))
    _refuse_unsupported(f)
    f.refuse_if_set("template", "send the prompt already formatted with \"raw\": true instead")
    f.refuse_if_set("tools", "tools work with /api/chat")
    f.refuse_if_set("context", "it is deprecated in Ollama: use /api/chat to continue a conversation")
    prompt = f.text("prompt", "")
    suffix = f.text("suffix")
    system = f.text("system")
    raw = f.flag("raw", False)
    if not prompt and not suffix and not system:
        return await _load_or_unload(request, f, "response", "")
    if suffix is not None:
        native = InfillPrompt(prompt, suffix)
    else:
        # raw: the client formatted the prompt (its own template, FIM markers): special
        # tokens parse, as in Ollama. Otherwise the prompt is a user turn: plain text.
        native = TextPrompt(prompt, system=None if raw else system, templated=not raw, special=raw)
    job = _common(f, "ollama_generate", native)
    return GenerationResponse(request.app.state.server.service, job, GenerateRenderer(job.model),
                              stream=f.flag("stream", True), t_arrival=t0, path=request.url.path)


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
]
