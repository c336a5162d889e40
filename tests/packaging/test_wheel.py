"""The wheel and sdist as `python -m build` makes them: every module and data file of every
package, nothing from tests, and a wheel that works installed into a fresh virtual
environment, run from a folder outside the repo (so nothing is imported from the checkout).

Slow: it builds both (offline, --no-isolation) and pip-installs the wheel with its
dependencies (from pip's cache where it has them: llama-cpp-python's wheel, built once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, require_model
from localllm import __version__
from test_package_files import data_files, source_packages

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
NOT_SHIPPED = ("tests/", "benchmarks/", "packaging/", ".ci/")


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def expected_files() -> dict[Path, str]:
    """Source file -> its path inside the installed package, for every module and data file."""
    packages = source_packages()
    expected = {}
    for name, folder in packages.items():
        for module in folder.glob("*.py"):
            expected[module] = f"{name.replace('.', '/')}/{module.name}"
    for path in data_files(packages):
        name = max((n for n, f in packages.items() if f in path.parents), key=lambda n: len(packages[n].parts))
        expected[path] = f"{name.replace('.', '/')}/{path.relative_to(packages[name]).as_posix()}"
    return expected


def test_the_wheel_carries_every_module_and_data_file_and_nothing_else(dist):
    (wheel,) = dist.glob("localllm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(installed for installed in expected_files().values() if installed not in names)
    assert not missing, f"not in the wheel: {missing}"
    strays = sorted(n for n in names if not n.startswith(("localllm/", "localllm-")))
    assert not strays, f"in the wheel but not under localllm/: {strays}"


def test_the_sdist_carries_the_sources_and_data_but_no_tests(dist):
    (sdist,) = dist.glob("localllm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    sources = {path.relative_to(REPO).as_posix() for path in expected_files()}
    assert not sorted(sources - names), f"not in the sdist: {sorted(sources - names)}"
    assert {"pyproject.toml", "README.md"} <= names
    shipped = sorted(n for n in names if n.startswith(NOT_SHIPPED))
    assert not shipped, f"test or tooling files in the sdist: {shipped}"


def test_the_wheel_installed_in_a_fresh_venv_runs_from_outside_the_repo(dist, tmp_path):
    stories = require_model("stories260K/stories260K.gguf")
    reference = require_model("stories260K/greedy-reference.txt").read_text()
    (wheel,) = dist.glob("localllm-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["LOCALLLM_HOME"] = str(tmp_path / "data")
    env["LOCALLLM_CONFIG"] = str(tmp_path / "config.toml")
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                       capture_output=True, text=True, env=env, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def localllm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "localllm"), *args], capture_output=True, text=True, env=env,
                              cwd=outside, stdin=subprocess.DEVNULL, timeout=120)

    r = localllm("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"localllm {__version__}", r.stderr
    prompt = "Once upon a time"
    r = localllm("run", str(stories), prompt, "--temperature", "0", "--max-tokens", "24", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 20 and reference.startswith(prompt + r.stdout.rstrip("\n")), r.stdout
    # It ran the installed copy, not this checkout.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import localllm, localllm.cpu_backend as b; "
                            "print(localllm.__file__); print(b.__file__)"],
                           capture_output=True, text=True, env=env, cwd=outside, timeout=60)
    assert where.returncode == 0 and all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout
