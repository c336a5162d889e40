"""llama-server's own shapes, for editor plugins written against llama.cpp's server
(llama.vim, llama.vscode): `POST /completion` (alias `/completions`) and `POST /infill`.

Both answer one JSON object, or with `"stream": true` server-sent events `data: {...}`
whose last one has `"stop": true` (no `[DONE]`, as llama-server). The object carries
`content`, `stop_type` ("eos", "limit"), `tokens_predicted`, `tokens_evaluated`,
`tokens_cached`, `truncated` and llama-server's `timings` (prompt_n counts the prompt
tokens computed, cache_n the ones reused from the KV cache); `response_fields` picks
fields by "a/b" paths, as llama.vim asks for them.

`/completion` takes `prompt` as text (special tokens parse, BOS added as the model
wants), token ids or a mix. `/infill` builds a fill-in-the-middle prompt from
`input_prefix`, `prompt` (text typed before the cursor), `input_suffix` and
`input_extra` ([{filename, text}] context chunks), laid out and cut to fit as
llama-server does (`localllm/server/fim.py`); `n_predict: 0` only fills the KV cache.
Sampling: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,
presence/frequency_penalty, seed, logit_bias, stop, ignore_eos, plus n_indent and
t_max_predict_ms (`text_limits.py`). `model` may be left out when the server has one
model (`--model`, or the only one loaded). `cache_prompt` is accepted: prefix reuse is
always on here. Fields that only tune llama.cpp's own samplers (samplers, dry_*, xtc_*,
dynatemp_*, id_slot, t_max_prompt_ms) are accepted and ignored; ones that would change
what comes back and are not implemented (n_probs, return_tokens, grammar, json_schema,
mirostat, typical_p) are refused with a 400.
"""

from __future__ import annotations

import json
import time

from starlette.requests import Request
from starlette.routing import Route

from localllm.server.errors import APIError, BadRequest, error_payload
from localllm.server.fields import Fields, read_json_object
from localllm.server.jobs import GenerationJob, GenerationOutcome, InfillPrompt, MixedPrompt, TextPrompt, TokenPrompt
from localllm.server.responses import GenerationResponse
from localllm.server.text_limits import InfillTextLimit
from localllm.types import SamplingParams

_DEFAULTS = SamplingParams()
MAX_EXTRA_CHUNKS = 1024


# -- parsing ------------------------------------------------------------------------------

def _refuse_unsupported(f: Fields) -> None:
    if (f.integer("n_probs", 0) or 0) > 0:
        raise BadRequest("'n_probs' is not supported: this server does not return token probabilities", param="n_probs")
    f.refuse_if_set("return_tokens", "this server returns text, not token ids")
    f.refuse_if_set("grammar", "constrained decoding is not available in this server")
    f.refuse_if_set("json_schema", "constrained decoding is not available in this server")
    if f.integer("mirostat", 0):
        raise BadRequest("'mirostat' is not supported: use temperature, top_k, top_p and min_p", param="mirostat")
    if f.number("typical_p", 1.0) != 1.0:
        raise BadRequest("'typical_p' is not supported: use top_p or min_p", param="typical_p")


def _logit_bias(f: Fields) -> dict[int, float]:
    """llama-server's forms: {"id": bias} or [[id, bias], ...]; a bias of false bans the token."""
    value = f.raw("logit_bias")
    if value is None:
        return {}
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list):
        raise BadRequest("'logit_bias' must be an object or an array of [token id, bias] pairs", param="logit_bias")
    bias = {}
    for pair in pairs:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadRequest("'logit_bias' must be an object or an array of [token id, bias] pairs", param="logit_bias")
        token, amount = pair
        try:
            token = int(token) if not isinstance(token, bool) else None
        except (TypeError, ValueError):
            token = None
        if token is None:
            raise BadRequest(f"'logit_bias' names {pair[0]!r}: use token ids", param="logit_bias")
        if amount is False:
            bias[token] = float("-inf")
        elif isinstance(amount, (int, float)) and not isinstance(amount, bool) and abs(amount) <= 1e6:
            bias[token] = float(amount)
        else:
            raise BadRequest(f"'logit_bias' for token {token} must be a number or false", param="logit_bias")
    return bias


def _sampling(f: Fields) -> SamplingParams:
    seed = f.integer("seed", -1)
    repeat_last_n = f.integer("repeat_last_n", _DEFAULTS.repeat_last_n, lo=-1)
    return SamplingParams(
        temperature=f.number("temperature", _DEFAULTS.temperature, lo=0),
        top_k=f.integer("top_k", _DEFAULTS.top_k, lo=0),
        top_p=f.number("top_p", _DEFAULTS.top_p, lo=0, hi=1),
        min_p=f.number("min_p", _DEFAULTS.min_p, lo=0, hi=1),
        repeat_penalty=f.number("repeat_penalty", _DEFAULTS.repeat_penalty, lo=0),
        repeat_last_n=0 if repeat_last_n == -1 else repeat_last_n,  # ours: 0 means the whole history
        presence_penalty=f.number("presence_penalty", 0.0),
        frequency_penalty=f.number("frequency_penalty", 0.0),
        logit_bias=_logit_bias(f),
        seed=seed if seed >= 0 else None,  # llama-server: -1 means random
    )


def _model_name(request: Request, f: Fields) -> str:
    name = f.text("model")
    if name:
        return name
    server = request.app.state.server
    if server.config.preload:
        return server.config.preload
    loaded = {s.name for s in server.models.slots()}
    if len(loaded) == 1:
        return loaded.pop()
    raise BadRequest("'model' is required: this server serves several models (llama-server serves one); "
                     "name one, or start the server with --model", param="model")


def _job(request: Request, f: Fields, prompt, api: str) -> GenerationJob:
    _refuse_unsupported(f)
    n_predict = f.integer("n_predict", f.integer("max_tokens", -1, lo=-1), lo=-1)
    f.flag("cache_prompt", True)  # accepted; prefix reuse is always on
    return GenerationJob(model=_model_name(request, f), prompt=prompt, sampling=_sampling(f),
                         max_tokens=None if n_predict < 0 else n_predict, max_tokens_param="n_predict",
                         stop=f.stops("stop"), ignore_eos=f.flag("ignore_eos", False), api=api)


def parse_completion_prompt(value):
    """Text, token ids, or ids mixed with text. As in llama-server, an array of strings
    only is a batch of prompts: refused here (one prompt per request)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return TextPrompt(value, special=True)
    if isinstance(value, list) and value and all(isinstance(p, (int, str)) and not isinstance(p, bool) for p in value):
        if all(isinstance(p, int) for p in value):
            return TokenPrompt(tuple(value))
        if any(isinstance(p, int) for p in value):
            return MixedPrompt(tuple(value))
    if value is None:
        raise BadRequest("'prompt' is required", param="prompt")
    raise BadRequest("'prompt' must be a string or an array of token ids and strings (one prompt per request)",
                     param="prompt")


def parse_extra(f: Fields) -> tuple[tuple[str, str], ...]:
    chunks = f.array("input_extra", limit=MAX_EXTRA_CHUNKS) or []
    out = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict):
            raise BadRequest(f"'input_extra[{i}]' must be an object with 'filename' and 'text'", param="input_extra")
        c = Fields(chunk, f"input_extra[{i}].")
        out.append((c.text("filename", "tmp"), c.text("text", "")))
    return tuple(out)


# -- rendering ----------------------------------------------------------------------------

def timings(outcome: GenerationOutcome) -> dict:
    s = outcome.stats
    prompt_n = s.prompt_tokens - s.cached_tokens
    prompt_ms = s.prefill_s * 1000
    predicted_ms = max(0.0, s.ttft_s - s.prefill_s + s.decode_s) * 1000
    return {
        "cache_n": s.cached_tokens,
        "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n / prompt_ms * 1000 if prompt_ms > 0 else 0.0,
        "predicted_n": s.generated_tokens, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / s.generated_tokens if s.generated_tokens else 0.0,
        "predicted_per_second": s.generated_tokens / predicted_ms * 1000 if predicted_ms > 0 else 0.0,
    }


def select_fields(body: dict, paths: list[str]) -> dict:
    """llama-server's `response_fields`: each "a/b" path that exists, flattened to its key."""
    out = {}
    for path in paths:
        node = body
        for part in path.split("/"):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            out[path] = node
    return out


class LlamaServerRenderer:
    stream_media_type = "text/event-stream; charset=utf-8"

    def __init__(self, model: str, path: str, limit: InfillTextLimit | None, response_fields: list[str] | None):
        self.model = model
        self.path = path
        self.limit = limit
        self.response_fields = response_fields

    @staticmethod
    def _event(body: dict) -> bytes:
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def stream_head(self, outcome: GenerationOutcome) -> bytes:
        return b""

    def stream_piece(self, text: str) -> bytes:
        return self._event({"index": 0, "content": text, "tokens": [], "stop": False, "id_slot": -1})

    def _final(self, outcome: GenerationOutcome, text: str) -> dict:
        s = outcome.stats
        limited = (self.limit is not None and self.limit.stopped) or outcome.finish_reason == "length"
        return {
            "index": 0, "content": text, "tokens": [], "id_slot": 0, "stop": True, "model": self.model,
            "tokens_predicted": s.generated_tokens, "tokens_evaluated": s.prompt_tokens,
            "tokens_cached": s.prompt_tokens + s.generated_tokens, "truncated": outcome.truncated,
            "has_new_line": "\n" in outcome.text,
            "stop_type": "limit" if limited else ("eos" if outcome.finish_reason == "stop" else "none"),
            "stopping_word": "", "timings": timings(outcome),
        }

    def stream_tail(self, outcome: GenerationOutcome) -> bytes:
        return self._event(self._final(outcome, ""))

    def stream_error(self, err: APIError) -> bytes:
        return self._event(error_payload(self.path, err))

    def whole(self, outcome: GenerationOutcome) -> dict:
        body = self._final(outcome, outcome.text)
        return select_fields(body, self.response_fields) if self.response_fields else body


# -- routes -------------------------------------------------------------------------------

def _response(request: Request, f: Fields, job: GenerationJob, t0: float) -> GenerationResponse:
    n_indent = f.integer("n_indent", 0, lo=0)
    t_max = f.integer("t_max_predict_ms", 0, lo=0)
    limit = InfillTextLimit(n_indent, t_max) if n_indent or t_max else None
    fields = f.array("response_fields", limit=64)
    if fields is not None and not all(isinstance(p, str) for p in fields):
        raise BadRequest("'response_fields' must be an array of strings", param="response_fields")
    path = request.url.path
    return GenerationResponse(request.app.state.server.service, job,
                              LlamaServerRenderer(job.model, path, limit, fields),
                              stream=f.flag("stream", False), t_arrival=t0, path=path, limit=limit)


async def completion(request: Request):
    t0 = time.perf_counter()
    f = Fields(await read_json_object(request))
    job = _job(request, f, parse_completion_prompt(f.raw("prompt")), "llama_completion")
    return _response(request, f, job, t0)


async def infill(request: Request):
    t0 = time.perf_counter()
    f = Fields(await read_json_object(request))
    prompt = InfillPrompt(prefix=f.text("input_prefix", ""), suffix=f.text("input_suffix", ""),
                          typed=f.text("prompt", ""), extra=parse_extra(f), repository=True)
    return _response(request, f, _job(request, f, prompt, "llama_infill"), t0)


routes = [
    Route("/completion", completion, methods=["POST"]),
    Route("/completions", completion, methods=["POST"]),
    Route("/infill", infill, methods=["POST"]),
]
