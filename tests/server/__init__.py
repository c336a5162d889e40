"""Tests of the REST server (`localllm serve`): real uvicorn, real model, official clients."""
