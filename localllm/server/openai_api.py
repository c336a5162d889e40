"""OpenAI's shapes: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

Requests are parsed into a `GenerationJob`; the renderers write chat.completion(.chunk)
and text_completion objects, as whole JSON or as server-sent events ending with
`data: [DONE]`. Besides OpenAI's own fields, `top_k`, `min_p` and `repeat_penalty` are
accepted (as llama.cpp's and vLLM's servers do) for clients that pass `extra_body`.
Features the server does not have (n > 1, tools, logprobs, JSON modes, images) are
refused with a 400 rather than ignored.
"""

from __future__ import annotations

import json
import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from localllm.server.errors import APIError, BadRequest, NotFound, error_payload
from localllm.server.fields import MAX_MESSAGES, Fields, read_json_object
from localllm.server.jobs import (
    ChatPrompt, GenerationJob, GenerationOutcome, InfillPrompt, TextPrompt, TokenPrompt,
)
from localllm.server.responses import GenerationResponse
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
    f.refuse_if_set("logprobs", "this server does not return log probabilities")
    f.refuse_if_set("top_logprobs", "this server does not return log probabilities")
    f.refuse_if_set("tools", "tool calling is not available in this server yet")
    f.refuse_if_set("functions", "function calling is not available in this server yet")
    fmt = f.obj("response_format")
    if fmt is not None and fmt.text("type", "text") != "text":
        raise BadRequest("'response_format' other than text is not supported: JSON modes need "
                         "constrained decoding, which this server does not have", param="response_format")


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
        m.refuse_if_set("tool_calls", "tool calling is not available in this server yet")
        m.refuse_if_set("function_call", "function calling is not available in this server yet")
        messages.append(Message(_ROLES[role], _content(item.get("content"), where)))
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
    job = GenerationJob(model=model, prompt=ChatPrompt(messages), sampling=_sampling(f), max_tokens=max_tokens,
                        max_tokens_param=param, stop=f.stops("stop"), api="openai_chat", given=_given(f))
    return job, stream, include_usage


def parse_completion(body: dict) -> tuple[GenerationJob, bool, bool, bool]:
    f = Fields(body)
    model = _model(f)
    _refuse_unsupported(f)
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
                        max_tokens_param=param, stop=f.stops("stop"), api="openai_completions", given=_given(f))
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
    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    @staticmethod
    def _choice_delta(text, finish):
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._event({"choices": [choice]}).encode()

    def whole(self, outcome: GenerationOutcome) -> dict:
        return dict(self._base, object="chat.completion", choices=[{
            "index": 0, "message": {"role": "assistant", "content": outcome.text},
            "logprobs": None, "finish_reason": _finish(outcome),
        }], usage=usage(outcome))


class CompletionRenderer(_SSERenderer):
    object_name = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, model: str, include_usage: bool, echo_text: str | None):
        super().__init__(model, include_usage)
        self.echo_text = echo_text

    @staticmethod
    def _choice_delta(text, finish):
        return {"index": 0, "text": "" if text is None else text, "logprobs": None, "finish_reason": finish}

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        return self.stream_piece(self.echo_text) if self.echo_text else b""

    def whole(self, outcome: GenerationOutcome) -> dict:
        return dict(self._base, choices=[{
            "index": 0, "text": (self.echo_text or "") + outcome.text, "logprobs": None,
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
