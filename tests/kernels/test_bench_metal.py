"""benchmarks/bench_metal.py keeps working where it cannot measure: elsewhere than Apple
Silicon it says so and exits 0; with --emulate its whole code path runs on tiny shapes
with the emulator standing in for Metal (a smoke test; the times mean nothing)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO, require_model
from tests.kernels.kernel_checks import emulator_factory

SCRIPT = REPO / "benchmarks" / "bench_metal.py"


def test_elsewhere_it_says_it_needs_apple_silicon():
    if sys.platform == "darwin" and platform.machine() == "arm64":
        pytest.skip("this is Apple Silicon: the benchmark would measure")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    assert "needs Apple Silicon" in run.stdout


@pytest.mark.slow
def test_emulated_run_goes_through_every_table(tmp_path):
    emulator_factory()
    require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")  # the synthetic model's vocabulary
    run = subprocess.run([sys.executable, str(SCRIPT), "--emulate"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    for title in ("quantized matmul (emulated)", "decode attention (emulated)", "MLX path decode (emulated"):
        assert title in run.stdout
    assert "8-bit cache S=40" in run.stdout and "q6_k 40x512" in run.stdout
