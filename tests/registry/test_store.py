"""The store: import, show, rm and garbage collection, damaged state, atomic manifests,
and the multi-file layouts (MLX folders, split GGUF) pulled from the fake hub."""

from __future__ import annotations

import json
import os
import struct

import pytest

from localllm.errors import ModelFileError
from localllm.registry import (
    InvalidModelNameError, ModelNotFoundError, delete_model, import_model, list_models, pull_model,
    resolve_model_path, show_model,
)
from localllm.registry.manifest import write_atomically
from localllm.registry.names import ModelName
from localllm.registry.store import ContentStore

from .conftest import FAST_RETRY, build_gguf, sha256


def test_import_then_show_reads_the_header(settings, tmp_path):
    src = build_gguf(tmp_path / "built.gguf", chat_template="{{ messages }}", license="apache-2.0")
    before = src.read_bytes()
    entry = import_model(src, "mine:v1", settings)
    assert (entry.name, entry.format, entry.quant) == ("mine:v1", "gguf", "F16")
    assert entry.digest == sha256(before) and entry.path.read_bytes() == before and src.read_bytes() == before
    details = show_model("mine:v1", settings)
    assert (details.architecture, details.parameters, details.context_length) == ("llama", 64 * 256, 4096)
    assert details.has_chat_template and details.chat_template == "{{ messages }}"
    assert details.license == "apache-2.0"
    assert resolve_model_path("mine:v1", settings) == entry.path


def test_import_defaults_to_latest_and_refuses_what_it_cannot_use(settings, stories_path, tmp_path):
    entry = import_model(stories_path, "stories", settings)
    assert entry.name == "stories:latest" and entry.quant == "F32"
    assert resolve_model_path("stories", settings) == entry.path
    bogus = tmp_path / "notes.gguf"
    bogus.write_bytes(b"hello world, not a model")
    with pytest.raises(ModelFileError, match="not a GGUF model file"):
        import_model(bogus, "bogus", settings)
    with pytest.raises(InvalidModelNameError, match="hf.co/ names are for models pulled from the hub"):
        import_model(stories_path, "hf.co/me/mine", settings)


def test_rm_frees_only_blobs_no_other_model_uses(settings, stories_path):
    a = import_model(stories_path, "a:1", settings)
    import_model(stories_path, "b:1", settings)
    removal = delete_model("a:1", settings)
    assert removal.names == ["a:1 (gguf)"] and removal.freed_bytes == 0 and a.path.exists()
    removal = delete_model("b:1", settings)
    assert removal.freed_bytes == a.size_bytes and not a.path.exists()
    assert list_models(settings) == []
    with pytest.raises(ModelNotFoundError, match="unknown model 'a:1'"):
        delete_model("a:1", settings)


def test_rm_leaves_blobs_while_a_pull_is_running(settings, stories_path):
    entry = import_model(stories_path, "a:1", settings)
    store = ContentStore(settings.models_dir)
    guard = store.pull_guard()
    guard.acquire()
    try:
        assert delete_model("a:1", settings).freed_bytes is None and entry.path.exists()
    finally:
        guard.release()
    assert store.collect_garbage() == entry.size_bytes and not entry.path.exists()


def test_a_missing_blob_says_to_pull_again(settings, hub, catalog_repo):
    entry = pull_model("llama3.2:1b", settings, retry=FAST_RETRY)
    entry.path.unlink()
    with pytest.raises(ModelFileError, match=r"llama3.2:1b is damaged: .* is missing .*run `localllm pull llama3.2:1b`"):
        resolve_model_path("llama3.2:1b", settings)
    assert pull_model("llama3.2:1b", settings, retry=FAST_RETRY).path.exists()


def test_a_damaged_manifest_is_skipped_named_and_replaced(settings, stories_path):
    store = ContentStore(settings.models_dir)
    path = store.manifest_path(ModelName("a", "1"), "gguf")
    path.parent.mkdir(parents=True)
    path.write_text("{ half a manif")
    assert list_models(settings) == []
    with pytest.raises(ModelFileError, match=r"the manifest of a:1 .* is damaged .*`localllm rm a:1`"):
        store.read_manifest(ModelName("a", "1"), "gguf")
    assert import_model(stories_path, "a:1", settings).name == "a:1"


def test_manifest_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "m" / "gguf.json"
    write_atomically(target, '{"old": true}\n')

    def fail(*args):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomically(target, '{"new": true}\n')
    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in target.parent.iterdir()] == ["gguf.json"]  # no temp file left


def safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A safetensors file with zero-filled tensors of the given dtypes and shapes."""
    sizes = {"U32": 4, "F16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + bytes(offset)


def test_mlx_pull_makes_a_folder_with_repo_names(settings, hub):
    config = json.dumps({"model_type": "llama", "max_position_embeddings": 8192, "quantization": {"bits": 4, "group_size": 32}}).encode()
    files = {
        "config.json": config,
        "tokenizer_config.json": json.dumps({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}).encode(),
        "tokenizer.json": b'{"model": {}}',
        "model.safetensors": safetensors({
            "layers.0.q_proj.weight": ("U32", [8, 4]), "layers.0.q_proj.scales": ("F16", [8, 1]),
            "layers.0.q_proj.biases": ("F16", [8, 1]), "norm.weight": ("F32", [32]),
        }),
        "README.md": b"# card\n",
    }
    hub.add_repo("mlx-community/Llama-3.2-1B-Instruct-4bit", files)
    entry = pull_model("llama3.2:1b", settings, prefer_format="mlx", retry=FAST_RETRY)
    assert (entry.name, entry.format) == ("llama3.2:1b", "mlx") and entry.path.is_dir()
    assert sorted(p.name for p in entry.path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (entry.path / "config.json").read_bytes() == config  # a small non-LFS file, checked by git blob id
    details = show_model("llama3.2:1b", settings)
    assert (details.architecture, details.context_length, details.has_chat_template) == ("llama", 8192, True)
    assert details.parameters == 8 * 4 * 8 + 32  # packed 4-bit: 8 weights per uint32
    with pytest.raises(ModelNotFoundError, match=r"pulled only as MLX.*`localllm pull llama3.2:1b --format gguf`"):
        resolve_model_path("llama3.2:1b", settings)  # the llama.cpp backend is in use here
    assert delete_model("llama3.2:1b", settings).freed_bytes == sum(len(v) for k, v in files.items() if k != "README.md")
    assert not entry.path.exists()


def test_split_gguf_parts_keep_their_names(settings, hub):
    parts = {f"Q4_K_M/model-Q4_K_M-0000{i}-of-00002.gguf": os.urandom(5000 + i) for i in (1, 2)}
    hub.add_repo("someone/Split-GGUF", parts | {"model-Q8_0.gguf": os.urandom(100)})
    entry = pull_model("hf.co/someone/Split-GGUF", settings, retry=FAST_RETRY)
    assert entry.name == "hf.co/someone/Split-GGUF:Q4_K_M" and entry.size_bytes == 10003
    assert entry.path.name == "model-Q4_K_M-00001-of-00002.gguf"
    second = entry.path.parent / "model-Q4_K_M-00002-of-00002.gguf"
    assert second.read_bytes() == parts["Q4_K_M/model-Q4_K_M-00002-of-00002.gguf"]
    assert resolve_model_path("hf.co/someone/Split-GGUF:Q4_K_M", settings) == entry.path
