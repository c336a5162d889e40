"""Fixtures for the registry tests: a fake hub on 127.0.0.1, a private LOCALLLM_HOME,
the real stories260K file served as a catalog model, and GGUF files built here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from localllm.registry.hub import RetryPolicy

from .fake_hub import FakeHub

# Retries that take milliseconds, not seconds, and a read timeout a stall test can hit.
FAST_RETRY = RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.05, read_timeout_s=1.0, connect_timeout_s=2.0)

CATALOG_REPO = "bartowski/Llama-3.2-1B-Instruct-GGUF"
CATALOG_FILE = "Llama-3.2-1B-Instruct-Q4_K_M.gguf"
REPO_ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def env(hub, tmp_path, monkeypatch) -> dict:
    """The environment a pull sees: private data folder, the fake hub, no token."""
    values = {
        "LOCALLLM_HOME": str(tmp_path / "home"),
        "LOCALLLM_CONFIG": str(tmp_path / "config.toml"),
        "HF_ENDPOINT": hub.url,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "LOCALLLM_TEST_FREE_DISK_BYTES", "LOCALLLM_BACKEND"):
        monkeypatch.delenv(key, raising=False)
    return values


@pytest.fixture
def settings(env):
    from localllm.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def stories_bytes(stories_path) -> bytes:
    return stories_path.read_bytes()


@pytest.fixture
def catalog_repo(hub, stories_bytes):
    """The catalog's llama3.2:1b repo, holding the real stories260K under the Q4_K_M
    file name (so a pulled `llama3.2:1b` really runs), plus a Q8_0 and a README."""
    return hub.add_repo(CATALOG_REPO, {
        CATALOG_FILE: stories_bytes,
        "Llama-3.2-1B-Instruct-Q8_0.gguf": os.urandom(50_000),
        "README.md": b"# test repo\n",
    }, license="llama3.2")


def build_gguf(path: Path, chat_template: str | None = None, license: str | None = None, n: int = 256) -> Path:
    """A small valid GGUF (llama architecture, one F32 tensor) with chosen metadata."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(n)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_feed_forward_length(2 * n)
    writer.add_file_type(1)  # "F16" in the file-type table
    writer.add_tokenizer_model("gpt2")  # a vocabulary, as every loadable model has
    writer.add_token_list(["a", "b", "c", "ab"])
    if chat_template:
        writer.add_chat_template(chat_template)
    if license:
        writer.add_license(license)
    writer.add_tensor("token_embd.weight", np.random.default_rng(0).standard_normal((64, n)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cli(*args: str, env: dict, timeout: float = 60, **popen) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess (`python -m localllm`)."""
    full = dict(os.environ)
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "localllm", *args], capture_output=True, text=True, env=full,
        timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, **popen,
    )


def cli_process(*args: str, env: dict) -> subprocess.Popen:
    full = dict(os.environ)
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "localllm", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=full, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
    )
