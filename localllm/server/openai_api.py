"""OpenAI's shapes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Requests are parsed into a `GenerationJob`; the renderers write chat.completion(.chunk)
and text_completion objects, as whole JSON or as server-sent events ending with
`data: [DONE]`. Besides OpenAI's own fields, `top_k`, `min_p` and `repeat_penalty` are
accepted (as llama.cpp's and vLLM's servers do) for clients that pass `extra_body`.
Structured output (`response_format`), tools (`tools`, `tool_choice`, `tool_calls` and
`tool` messages, streamed `tool_calls` deltas) and `logprobs` / `top_logprobs` are read in
`structured_fields`. Features the server does not have (n > 1, legacy `functions`,
images) are refused with a 400 rather than ignored.
"""

from __future__ import annotations

import json
import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from localllm.server import structured_fields
from localllm.server.drafting import parse_draft
from localllm.server.errors import APIError, BadRequest, NotFound, error_payload
from localllm.server.fields import MAX_MESSAGES, Fields, read_json_object
from localllm.server.jobs import (
    ChatPrompt, GenerationJob, GenerationOutcome, InfillPrompt, TextPrompt, TokenPrompt,
)
from localllm.server.responses import GenerationResponse
from localllm.toolcalls.parser import ToolCallParser
from localllm.types import Message, SamplingParams

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_DEFAULTS = SamplingParams()


# -- parsing ------------------------------------------------------------------------------

def _refuse_unsupported(f: Fields) -> None:
    n = f.integer("n", 1)
    if n != 1:
        raise BadRequest(f"'n' is {n}: this server generates one choice per request; send n=1 "
                         "(or leave it out) and make several requests", param="n")
    if f.integer("best_of", 1) != 1:
        raise BadRequest("'best_of' other than 1 is not supported", param="best_of")
    f.refuse_if_set("functions", "the legacy 'functions' field is not supported: send 'tools'")
    f.refuse_if_set("function_call", "the legacy 'function_call' field is not supported: send 'tool_choice'")


def _sampling(f: Fields) -> SamplingParams:
    bias = {}
    raw_bias = f.obj("logit_bias")
    if raw_bias is not None:
        for key in raw_bias.data:
            try:
                token = int(key)
            except ValueError:
                raise BadRequest(f"'logit_bias' keys must be token ids, not {key!r}", param="logit_bias") from None
            bias[token] = raw_bias.number(key, lo=-100, hi=100)
    seed = f.integer("seed")
    return SamplingParams(
        temperature=f.number("temperature", 1.0, lo=0, hi=2),
        top_p=f.number("top_p", 1.0, lo=0, hi=1),
        top_k=f.integer("top_k", _DEFAULTS.top_k, lo=0),
        min_p=f.number("min_p", _DEFAULTS.min_p, lo=0, hi=1),
        repeat_penalty=f.number("repeat_penalty", _DEFAULTS.repeat_penalty, lo=0),
        presence_penalty=f.number("presence_penalty", 0.0, lo=-2, hi=2),
        frequency_penalty=f.number("frequency_penalty", 0.0, lo=-2, hi=2),
        logit_bias=bias,
        seed=None if seed is None else seed & 0xFFFF_FFFF_FFFF_FFFF,  # numpy wants it unsigned
    )


_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "presence_penalty",
                   "frequency_penalty", "seed")


def _given(f: Fields) -> frozenset[str]:
    """The fields the request set itself (GenerationJob.given): a created model's
    defaults fill in the rest."""
    given = {name for name in _SAMPLING_FIELDS if f.given(name)}
    if f.given("max_tokens") or f.given("max_completion_tokens"):
        given.add("max_tokens")
    if f.given("stop"):
        given.add("stop")
    return frozenset(given)


def _max_tokens(f: Fields, default: int | None) -> tuple[int | None, str]:
    for key in ("max_completion_tokens", "max_tokens"):
        value = f.integer(key, lo=1)
        if value is not None:
            return value, key
    return default, "max_tokens"


def _content(value, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise BadRequest(f"'{where}.content[{j}]' must be an object with a 'type'", param=f"{where}.content")
            if part["type"] != "text":
                raise BadRequest(f"'{where}.content[{j}]' is of type {part['type']!r}: only text content is "
                                 "supported", param=f"{where}.content")
            texts.append(Fields(part, f"{where}.content[{j}].").text("text", required=True))
        return "".join(texts)
    raise BadRequest(f"'{where}.content' must be a string or an array of content parts", param=f"{where}.content")


def parse_messages(items: list) -> tuple[Message, ...]:
    if not items:
        raise BadRequest("'messages' must not be empty", param="messages")
    messages = []
    for i, item in enumerate(items):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"'{where}' must be an object with 'role' and 'content'", param="messages")
        m = Fields(item, f"{where}.")
        role = m.text("role", required=True)
        if role not in _ROLES:
            raise BadRequest(f"'{where}.role' is {role!r}: use system, developer, user, assistant or tool",
                             param=f"{where}.role")
        m.refuse_if_set("function_call", "the legacy 'function_call' is not supported: send 'tool_calls'")
        calls = structured_fields.history_tool_calls(m) if role == "assistant" else ()
        messages.append(Message(_ROLES[role], _content(item.get("content"), where), tool_calls=calls,
                                tool_call_id=m.text("tool_call_id") if role == "tool" else None,
                                name=m.text("name") if role == "tool" else None))
    return tuple(messages)


def _model(f: Fields) -> str:
    return f.text("model", required=True)


def _stream_options(f: Fields) -> tuple[bool, bool]:
    stream = f.flag("stream", False)
    options = f.obj("stream_options")
    include_usage = options.flag("include_usage", False) if options is not None else False
    return stream, include_usage


def parse_chat(body: dict) -> tuple[GenerationJob, bool, bool]:
    f = Fields(body)
    model = _model(f)
    _refuse_unsupported(f)
    messages = parse_messages(f.array("messages", required=True, limit=MAX_MESSAGES))
    stream, include_usage = _stream_options(f)
    max_tokens, param = _max_tokens(f, None)
    tools = structured_fields.tools(f)
    logprobs = None
    if f.flag("logprobs", False):
        logprobs = f.integer("top_logprobs", 0, lo=0, hi=20)
    elif f.given("top_logprobs"):
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    job = GenerationJob(model=model, prompt=ChatPrompt(messages), sampling=_sampling(f), max_tokens=max_tokens,
                        max_tokens_param=param, stop=f.stops("stop"), api="openai_chat", given=_given(f),
                        constraint=structured_fields.response_format(f), tools=tools,
                        tool_choice=structured_fields.tool_choice(f, bool(tools)), logprobs=logprobs,
                        draft=parse_draft(f))
    return job, stream, include_usage


def parse_completion(body: dict) -> tuple[GenerationJob, bool, bool, bool]:
    f = Fields(body)
    model = _model(f)
    _refuse_unsupported(f)
    f.refuse_if_set("tools", "tools work with /v1/chat/completions")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    suffix = f.text("suffix")
    echo = f.flag("echo", False)
    if isinstance(prompt, str):
        # The legacy completions API sends a prompt the client formatted: special tokens parse.
        native = InfillPrompt(prompt, suffix) if suffix is not None else TextPrompt(prompt, special=True)
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if suffix is not None:
            raise BadRequest("'suffix' needs a text 'prompt', not token ids", param="suffix")
        native = TokenPrompt(tuple(prompt))
    elif isinstance(prompt, list):
        raise BadRequest("'prompt' must be one string or one array of token ids: batches of prompts are not "
                         "supported, send one request per prompt", param="prompt")
    elif prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    else:
        raise BadRequest("'prompt' must be a string or an array of token ids", param="prompt")
    if echo and not isinstance(native, TextPrompt):
        raise BadRequest("'echo' works with a text prompt only", param="echo")
    stream, include_usage = _stream_options(f)
    max_tokens, param = _max_tokens(f, 16)  # the legacy API's documented default
    job = GenerationJob(model=model, prompt=native, sampling=_sampling(f), max_tokens=max_tokens,
                        max_tokens_param=param, stop=f.stops("stop"), api="openai_completions", given=_given(f),
                        constraint=structured_fields.response_format(f), logprobs=f.integer("logprobs", lo=0, hi=20),
                        draft=parse_draft(f))
    return job, stream, include_usage, echo


# -- rendering ----------------------------------------------------------------------------

def usage(outcome: GenerationOutcome) -> dict:
    s = outcome.stats
    return {
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
    }


def _finish(outcome: GenerationOutcome) -> str:
    return "length" if outcome.finish_reason == "length" else "stop"


class _SSERenderer:
    stream_media_type = "text/event-stream; charset=utf-8"
    object_name = ""
    id_prefix = ""

    def __init__(self, model: str, include_usage: bool):
        self.id = self.id_prefix + secrets.token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._base = {"id": self.id, "object": self.object_name, "created": self.created, "model": model}
        # Every token's event is the same JSON around its text: build the halves once.
        marker = "\x00TEXT\x00"
        template = self._event({"choices": [self._choice_delta(marker, None)]})
        head, tail = template.split(json.dumps(marker), 1)
        self._piece_head, self._piece_tail = head.encode(), tail.encode()

    def _event(self, fields: dict, usage_value=...) -> str:
        body = dict(self._base, **fields)
        if self.include_usage:
            body["usage"] = None if usage_value is ... else usage_value
        return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"

    def stream_piece(self, text: str) -> bytes:
        return self._piece_head + json.dumps(text, ensure_ascii=False).encode() + self._piece_tail

    def stream_tail(self, outcome: GenerationOutcome) -> bytes:
        out = self._event({"choices": [self._choice_delta(None, _finish(outcome))]})
        if self.include_usage:
            out += self._event({"choices": []}, usage(outcome))
        return (out + "data: [DONE]\n\n").encode()

    def stream_error(self, err: APIError) -> bytes:
        return ("data: " + json.dumps(error_payload("/v1", err), ensure_ascii=False) + "\n\ndata: [DONE]\n\n").encode()


class ChatRenderer(_SSERenderer):
    """chat.completion(.chunk). With tools, the reply goes through the model family's
    tool-call parser: text as `content` deltas, each call as a `tool_calls` delta once it
    is complete (whole: id, type, name and arguments in one delta). With logprobs, each
    content delta carries the entries of the tokens that arrived with it."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, model: str, include_usage: bool):
        super().__init__(model, include_usage)
        self._outcome: GenerationOutcome | None = None
        self._parser: ToolCallParser | None = None
        self._logprobs_sent = 0
        self._calls_sent = 0

    @staticmethod
    def _choice_delta(text, finish):
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        self._outcome = outcome
        if outcome.tool_format is not None:
            self._parser = ToolCallParser(outcome.tool_format)
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._event({"choices": [choice]}).encode()

    def _new_logprobs(self) -> dict | None:
        o = self._outcome
        if o is None or len(o.logprobs) <= self._logprobs_sent:
            return None
        fresh = o.logprobs[self._logprobs_sent:]
        self._logprobs_sent += len(fresh)
        return {"content": [structured_fields.chat_logprob(lp, o.token_bytes) for lp in fresh]}

    def _events(self, events) -> bytes:
        out = []
        for e in events:
            if isinstance(e, str):
                choice = {"index": 0, "delta": {"content": e}, "logprobs": self._new_logprobs(), "finish_reason": None}
            else:
                choice = {"index": 0, "delta": {"tool_calls": [structured_fields.openai_call(e, self._calls_sent)]},
                          "logprobs": None, "finish_reason": None}
                self._calls_sent += 1
            out.append(self._event({"choices": [choice]}))
        return "".join(out).encode()

    def stream_piece(self, text: str) -> bytes:
        o = self._outcome
        if self._parser is None and (o is None or not o.logprobs):
            return super().stream_piece(text)
        return self._events(self._parser.feed(text) if self._parser is not None else [text])

    def stream_tail(self, outcome: GenerationOutcome) -> bytes:
        rest = self._events(self._parser.finish()) if self._parser is not None else b""
        finish = "tool_calls" if self._calls_sent and outcome.finish_reason != "length" else _finish(outcome)
        out = self._event({"choices": [self._choice_delta(None, finish)]})
        if self.include_usage:
            out += self._event({"choices": []}, usage(outcome))
        return rest + (out + "data: [DONE]\n\n").encode()

    def whole(self, outcome: GenerationOutcome) -> dict:
        message: dict = {"role": "assistant", "content": outcome.text}
        finish = _finish(outcome)
        if outcome.tool_format is not None:
            text, calls = ToolCallParser(outcome.tool_format).parse(outcome.text)
            if calls:
                message = {"role": "assistant", "content": text or None, "tool_calls": [
                    {k: v for k, v in structured_fields.openai_call(c, i).items() if k != "index"}
                    for i, c in enumerate(calls)]}
                finish = "tool_calls" if outcome.finish_reason != "length" else finish
        logprobs = None
        if outcome.logprobs:
            logprobs = {"content": [structured_fields.chat_logprob(lp, outcome.token_bytes) for lp in outcome.logprobs]}
        return dict(self._base, object="chat.completion", choices=[{
            "index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish,
        }], usage=usage(outcome))


class CompletionRenderer(_SSERenderer):
    object_name = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model: str, include_usage: bool, echo_text: str | None):
        super().__init__(model, include_usage)
        self.echo_text = echo_text
        self._outcome: GenerationOutcome | None = None
        self._logprobs_sent = 0
        self._offset = 0

    @staticmethod
    def _choice_delta(text, finish):
        return {"index": 0, "text": "" if text is None else text, "logprobs": None, "finish_reason": finish}

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        self._outcome = outcome
        return self.stream_piece(self.echo_text) if self.echo_text else b""

    def stream_piece(self, text: str) -> bytes:
        o = self._outcome
        if o is None or len(o.logprobs) <= self._logprobs_sent:
            return super().stream_piece(text)
        fresh = o.logprobs[self._logprobs_sent:]
        self._logprobs_sent += len(fresh)
        logprobs = structured_fields.completion_logprobs(fresh, o.token_bytes, self._offset)
        self._offset += sum(len(t) for t in logprobs["tokens"])
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": None}
        return self._event({"choices": [choice]}).encode()

    def whole(self, outcome: GenerationOutcome) -> dict:
        logprobs = None
        if outcome.logprobs:
            logprobs = structured_fields.completion_logprobs(outcome.logprobs, outcome.token_bytes)
        return dict(self._base, choices=[{
            "index": 0, "text": (self.echo_text or "") + outcome.text, "logprobs": logprobs,
            "finish_reason": _finish(outcome),
        }], usage=usage(outcome))


# -- routes -------------------------------------------------------------------------------

async def chat_completions(request: Request):
    t0 = time.perf_counter()
    body = await read_json_object(request)
    job, stream, include_usage = parse_chat(body)
    server = request.app.state.server
    return GenerationResponse(server.service, job, ChatRenderer(job.model, stream and include_usage),
                              stream=stream, t_arrival=t0, path=request.url.path)


async def completions(request: Request):
    t0 = time.perf_counter()
    body = await read_json_object(request)
    job, stream, include_usage, echo = parse_completion(body)
    echo_text = job.prompt.text if echo else None
    server = request.app.state.server
    return GenerationResponse(server.service, job, CompletionRenderer(job.model, stream and include_usage, echo_text),
                              stream=stream, t_arrival=t0, path=request.url.path)


def _model_object(name: str, created: float) -> dict:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "localllm"}


async def list_models(request: Request):
    server = request.app.state.server
    seen, data = set(), []
    for entry in await server.registry_entries():
        seen.add(entry.name)
        data.append(_model_object(entry.name, entry.modified))
    for slot in server.models.slots():
        if slot.name not in seen:
            seen.add(slot.name)
            data.append(_model_object(slot.name, slot.loaded_at or time.time()))
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request):
    name = request.path_params["name"]
    server = request.app.state.server
    for entry in await server.registry_entries():
        if entry.name == name:
            return JSONResponse(_model_object(entry.name, entry.modified))
    slot = server.models.find(name)
    if slot is not None:
        return JSONResponse(_model_object(slot.name, slot.loaded_at or time.time()))
    raise NotFound(f"model '{name}' not found: see GET /v1/models for the models this server has",
                   param="model", code="model_not_found")


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{name:path}", get_model, methods=["GET"]),
]
