"""How llama.cpp's OpenMP threads wait (cpu_backend/__init__.py): our spin count unless the
user chose a wait policy or one of their own, and that setting reaches the OpenMP runtime
llama.cpp loads (each case in a fresh interpreter: OpenMP reads its environment once)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

OPENMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_DISPLAY_ENV")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in OPENMP_VARS}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


SHOW = "import os, localllm.cpu_backend; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def test_our_spin_count_by_default():
    from localllm.cpu_backend import SPIN_COUNT

    assert _run(SHOW).stdout.split() == ["None", SPIN_COUNT]


@pytest.mark.parametrize("env, expected", [
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ["PASSIVE", "None"]),
    ({"OMP_WAIT_POLICY": "active"}, ["active", "None"]),
    ({"GOMP_SPINCOUNT": "5"}, ["None", "5"]),
])
def test_the_users_choice_wins(env, expected):
    assert _run(SHOW, **env).stdout.split() == expected


def test_the_spin_count_reaches_libgomp():
    pytest.importorskip("llama_cpp")
    from localllm.cpu_backend import SPIN_COUNT

    # libgomp prints its settings when it initializes, as llama_cpp's libraries load.
    result = _run("import localllm.cpu_backend.llamacpp", OMP_DISPLAY_ENV="VERBOSE")
    if "OPENMP DISPLAY ENVIRONMENT" not in result.stderr:
        pytest.skip("this llama.cpp build does not use GNU OpenMP")
    assert f"GOMP_SPINCOUNT = '{SPIN_COUNT}'" in result.stderr
