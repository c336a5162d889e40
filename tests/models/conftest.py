"""Fixtures for the MLX path's tests: test-built GGUF models, cached for the session."""

from __future__ import annotations

import pytest

from tests.conftest import models_dir, require_model


@pytest.fixture(scope="session")
def build_model(tmp_path_factory):
    """`build_model(shape_name, quant)` -> path of a test-built GGUF (see builders.py)."""
    require_model("stories260K/stories260K.gguf")  # its vocabulary is the test models'
    folder = tmp_path_factory.mktemp("mlx-test-models")

    def build(shape_name: str, quant: str = "F32"):
        from tests.models.builders import build as build_gguf

        return build_gguf(shape_name, quant, folder, models_dir())

    return build
