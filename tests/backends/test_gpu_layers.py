"""`--gpu-layers N`: llama.cpp offloads N layers (-1 all) to the GPU where its build can
(Metal on Apple Silicon); a CPU-only build, as here, runs everything on the CPU whatever
N is. Only the CPU side can be checked on this machine."""

from __future__ import annotations

import llama_cpp

from localllm.cpu_backend.llamacpp import ALL_LAYERS, offloaded_layers
from tests.conftest import run_cli


def test_offloaded_layers_follow_the_build():
    assert offloaded_layers(0) == 0
    if llama_cpp.llama_supports_gpu_offload():
        assert offloaded_layers(-1) == ALL_LAYERS and offloaded_layers(7) == 7
    else:
        assert offloaded_layers(-1) == 0 and offloaded_layers(7) == 0


def test_cli_takes_gpu_layers_and_refuses_nonsense(stories_path):
    ok = run_cli("run", str(stories_path), "Once upon a time", "--gpu-layers", "0", "--max-tokens", "8",
                 "--temperature", "0", "--no-cache", "--backend", "llamacpp")
    assert ok.returncode == 0, ok.stderr
    again = run_cli("run", str(stories_path), "Once upon a time", "--gpu-layers", "99", "--max-tokens", "8",
                    "--temperature", "0", "--no-cache", "--backend", "llamacpp")
    assert again.returncode == 0 and again.stdout == ok.stdout
    bad = run_cli("run", str(stories_path), "hi", "--gpu-layers", "-2")
    assert bad.returncode == 2 and "--gpu-layers -2" in bad.stderr
