"""Embedding routes: OpenAI's `POST /v1/embeddings`, Ollama's `POST /api/embed` and the
older `POST /api/embeddings`.

Each request holds a lease on its model (loading it if needed, as generation does) and
runs on the model's embedding context in a worker thread: that context is separate from
the generation engine, so embeddings are served while a chat streams and never wait in
the generation queue. Vectors are L2-normalised, as OpenAI and Ollama's `/api/embed`
return them; the older `/api/embeddings` returns them raw, as Ollama does.
"""

from __future__ import annotations

import asyncio
import base64
import time

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from localllm.backend.embedding import EmbeddingsUnsupported
from localllm.errors import ContextOverflowError, UserError
from localllm.server.errors import BadRequest
from localllm.server.fields import Fields, read_json_object
from localllm.server.ollama_api import ns, parse_keep_alive

MAX_INPUTS = 2048  # OpenAI's own limit per request


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def parse_openai_input(value) -> list:
    """OpenAI's `input`: a string, an array of strings, an array of token ids, or an
    array of token-id arrays. Empty strings are refused, as OpenAI refuses them."""
    if value == "" or isinstance(value, list) and "" in value:
        raise BadRequest("'input' holds an empty string: there is nothing to embed", param="input")
    if isinstance(value, str):
        return [value]
    if _is_token_ids(value):
        return [value]
    if isinstance(value, list) and value:
        if len(value) > MAX_INPUTS:
            raise BadRequest(f"'input' has {len(value)} items: at most {MAX_INPUTS} are accepted", param="input")
        if all(isinstance(v, str) for v in value) or all(_is_token_ids(v) for v in value):
            return list(value)
    if value is None:
        raise BadRequest("'input' is required", param="input")
    raise BadRequest("'input' must be a string, an array of strings, an array of token ids or an array of "
                     "token-id arrays (none of them empty)", param="input")


def parse_ollama_input(f: Fields) -> list[str]:
    value = f.raw("input")
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) > MAX_INPUTS:
            raise BadRequest(f"'input' has {len(value)} items: at most {MAX_INPUTS} are accepted")
        return list(value)
    if value is None:
        return []
    raise BadRequest("'input' must be a string or an array of strings")


async def run_embedding(request: Request, name: str, inputs: list, *, truncate: bool, normalize: bool,
                        dimensions: int | None, keep_alive: tuple[float | None, bool] = (None, False)):
    """(EmbeddingResult, seconds spent loading the model). 400s for what the model cannot do."""
    server = request.app.state.server
    lease = await server.models.acquire(name)
    try:
        model = lease.model
        try:
            runner = await asyncio.to_thread(model.embeddings)
            if dimensions is not None and dimensions != runner.dimensions:
                raise BadRequest(f"'dimensions' is {dimensions}, but model '{name}' gives {runner.dimensions}-dimension "
                                 "vectors and cannot shorten them: leave 'dimensions' out", param="dimensions")
            vocab = model.vocab_size
            for item in inputs:
                if not isinstance(item, str):
                    bad = [t for t in item if not 0 <= t < vocab]
                    if bad:
                        raise BadRequest(f"token id {bad[0]} in 'input' is outside the vocabulary of {vocab} tokens",
                                         param="input")
            if not inputs:
                return None, lease.load_wait_s
            result = await asyncio.to_thread(runner.embed, inputs, truncate=truncate, normalize=normalize)
        except ContextOverflowError as e:
            raise BadRequest(str(e), param="input", code="context_length_exceeded") from None
        except EmbeddingsUnsupported as e:
            raise BadRequest(str(e), param="model", code="embeddings_unsupported") from None
        except UserError as e:  # an empty input, say
            raise BadRequest(str(e), param="input") from None
        return result, lease.load_wait_s
    finally:
        lease.release(*keep_alive)


def _dimensions(f: Fields) -> int | None:
    return f.integer("dimensions", lo=1)


# -- OpenAI ---------------------------------------------------------------------------------

def _encode(vector, fmt: str):
    if fmt == "base64":  # little-endian float32 bytes, as OpenAI's clients decode them
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


async def openai_embeddings(request: Request):
    f = Fields(await read_json_object(request))
    name = f.text("model", required=True)
    inputs = parse_openai_input(f.raw("input"))
    fmt = f.text("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise BadRequest(f"'encoding_format' is {fmt!r}: use float or base64", param="encoding_format")
    result, _ = await run_embedding(request, name, inputs, truncate=False, normalize=True, dimensions=_dimensions(f))
    data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(result.vectors)]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": name, "usage": usage})


# -- Ollama ---------------------------------------------------------------------------------

async def ollama_embed(request: Request):
    t0 = time.perf_counter()
    f = Fields(await read_json_object(request))
    name = f.text("model", required=True)
    inputs = parse_ollama_input(f)
    f.obj("options")  # load-time options are server settings here; checked for type only
    result, load_s = await run_embedding(request, name, inputs, truncate=f.flag("truncate", True), normalize=True,
                                         dimensions=_dimensions(f), keep_alive=parse_keep_alive(f))
    vectors = result.vectors.tolist() if result is not None else []
    return JSONResponse({
        "model": name, "embeddings": vectors,
        "total_duration": ns(time.perf_counter() - t0), "load_duration": ns(load_s),
        "prompt_eval_count": result.prompt_tokens if result is not None else 0,
    })


async def ollama_embeddings(request: Request):
    """The older endpoint: one `prompt`, one vector, not normalised."""
    f = Fields(await read_json_object(request))
    name = f.text("model", required=True)
    prompt = f.text("prompt", "")
    f.obj("options")
    result, _ = await run_embedding(request, name, [prompt] if prompt else [], truncate=True, normalize=False,
                                    dimensions=None, keep_alive=parse_keep_alive(f))
    return JSONResponse({"embedding": result.vectors[0].tolist() if result is not None else []})


routes = [
    Route("/v1/embeddings", openai_embeddings, methods=["POST"]),
    Route("/api/embed", ollama_embed, methods=["POST"]),
    Route("/api/embeddings", ollama_embeddings, methods=["POST"]),
]
