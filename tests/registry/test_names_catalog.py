"""Model names, quant labels in file names, and the shipped catalog's contents."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from localllm.registry.catalog import load_catalog
from localllm.registry.errors import InvalidModelNameError, ModelNotFoundError
from localllm.registry.names import ModelName, looks_like_path, parse_model_name, quant_from_filename, split_part


@pytest.mark.parametrize("text, expected", [
    ("llama3.2", ModelName("llama3.2", None)),
    ("Llama3.2:1B", ModelName("llama3.2", "1b")),
    ("qwen2.5-coder:7b-q8_0", ModelName("qwen2.5-coder", "7b-q8_0")),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", ModelName("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", None)),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m", ModelName("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")),
    ("https://huggingface.co/owner/Repo-GGUF:Q8_0", ModelName("hf.co/owner/Repo-GGUF", "Q8_0")),
    ("mine/model:v1", ModelName("mine/model", "v1")),
])
def test_names_parse(text, expected):
    assert parse_model_name(text) == expected


@pytest.mark.parametrize("text", ["", "a:b:c", "hf.co/onlyowner", "hf.co/a/b/c", "x:", "../etc:passwd", "a/b/c:d", "hf.co/o/r:"])
def test_bad_names_say_what_a_name_looks_like(text):
    with pytest.raises(InvalidModelNameError):
        parse_model_name(text)


def test_paths_are_told_from_names(tmp_path):
    assert looks_like_path("model.gguf") and looks_like_path("./x") and looks_like_path(str(tmp_path))
    assert not looks_like_path("llama3.2:1b") and not looks_like_path("hf.co/a/b")


@pytest.mark.parametrize("filename, quant", [
    ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
    ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", "Q4_K_M"),
    ("Llama-3.2-1B-Instruct-f16.gguf", "F16"),
    ("model-IQ4_XS.gguf", "IQ4_XS"),
    ("Q8_0/model-00001-of-00002.gguf", "Q8_0"),
    ("Phi-3.5-mini-instruct-Q6_K_L.gguf", "Q6_K_L"),
    ("ggml-model-bf16.gguf", "BF16"),
    ("smollm2-1.7b-instruct.gguf", None),
])
def test_quant_labels_come_from_file_names(filename, quant):
    assert quant_from_filename(filename) == quant


def test_split_parts():
    assert split_part("a-Q4_K_M-00002-of-00003.gguf") == (2, 3) and split_part("a.gguf") is None


def test_catalog_has_the_models_people_run_and_no_hashes():
    text = resources.files("localllm.registry").joinpath("catalog.json").read_text()
    assert not re.search(r"\b[0-9a-f]{40,64}\b", text), "no hashes in the catalog: they come from the hub"
    catalog = load_catalog()
    for family, tags in {
        "llama3.2": ["1b", "3b"], "llama3.1": ["8b"], "qwen2.5": ["0.5b", "1.5b", "3b", "7b"],
        "qwen2.5-coder": ["0.5b", "1.5b", "3b", "7b"], "mistral": ["7b"], "gemma2": ["2b"],
        "phi3.5": ["3.8b"], "smollm2": ["135m", "360m", "1.7b"],
    }.items():
        for tag in tags:
            choice = catalog.choose(ModelName(family, tag))
            assert choice.quant == "Q4_K_M" and choice.gguf.files["Q4_K_M"].endswith(".gguf")
            assert choice.mlx is not None and choice.mlx.repo.startswith("mlx-community/")
    data = json.loads(text)
    for family, entry in data["models"].items():
        assert entry["default_tag"] in entry["tags"]
        for tag, variant in entry["tags"].items():
            for quant, filename in variant["gguf"]["files"].items():
                assert quant_from_filename(filename) == quant, (family, tag, filename)


def test_catalog_tags_and_defaults():
    catalog = load_catalog()
    assert str(catalog.choose(ModelName("llama3.2")).name) == "llama3.2:3b"
    assert str(catalog.choose(ModelName("llama3.2", "latest")).name) == "llama3.2:3b"
    assert str(catalog.choose(ModelName("llama3.2", "1b-q4_k_m")).name) == "llama3.2:1b"
    q8 = catalog.choose(ModelName("llama3.2", "1b-q8_0"))
    assert (str(q8.name), q8.quant) == ("llama3.2:1b-q8_0", "Q8_0")
    assert catalog.choose(ModelName("unknown-family")) is None
    with pytest.raises(ModelNotFoundError, match="available tags are 1b, 3b"):
        catalog.choose(ModelName("llama3.2", "70b"))
    assert catalog.suggestions("lama3.2")[:1] == ["llama3.2"]
    assert "qwen2.5-coder" in catalog.suggestions("qwen-coder")
