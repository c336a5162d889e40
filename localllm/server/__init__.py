"""The local REST endpoint: OpenAI- and Ollama-compatible shapes in front of the engine.

Layout (each module owns one thing):
- `config`: `ServerConfig` (host, port, keys, limits) and keep-alive durations;
- `errors`, `fields`: error shapes per API and typed readers for JSON bodies;
- `jobs`: the one native request type every API shape translates into;
- `models`: loading on demand, keep-alive, eviction; `service`: job to running generation
  (bounded queue, context checks); `stream`: engine thread to asyncio bridge;
- `responses`: ASGI responses that cancel work when the client goes away;
- `openai_api`, `ollama_api`, `ollama_models`: the translation layers and routes;
- `security`: API key, CORS allow-list, Host check, body size limit; `metrics`: Prometheus;
- `app`: `create_app`; `runner`: uvicorn.

This module stays import-light: `localllm serve --help` reads the defaults from here.
"""

DEFAULT_HOST = "127.0.0.1"
# Ollama listens on 11434 and llama.cpp's llama-server on 8080; we take the next port
# after Ollama's, so editor plugins that speak Ollama need only the port changed.
DEFAULT_PORT = 11435
DEFAULT_KEEP_ALIVE = "5m"
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
API_KEY_ENV = "LOCALLLM_API_KEY"

__all__ = [
    "API_KEY_ENV", "DEFAULT_HOST", "DEFAULT_KEEP_ALIVE", "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_QUEUE", "DEFAULT_PORT",
]
