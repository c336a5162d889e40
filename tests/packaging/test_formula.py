"""The Homebrew formula against the lock, the lock against pyproject.toml, all offline:
generating needs the network, checking must not. When pyproject's dependencies change,
these fail until `python packaging/lock.py` and
`python packaging/homebrew/generate_formula.py` have been run again.

Where Ruby is installed, `ruby -c` checks the formula's syntax and Ruby itself reads back
the test model script embedded in it. The script's generation is run here for real.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, run_cli

PACKAGING = REPO / "packaging"
FORMULA_PATH = PACKAGING / "homebrew" / "localllm.rb"


def load_script(path: Path):
    """A packaging script as a module (packaging/ is not a package: the name is PyPI's)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


generator = load_script(PACKAGING / "homebrew" / "generate_formula.py")
locker = load_script(PACKAGING / "lock.py")
FORMULA = FORMULA_PATH.read_text()
LOCK = generator.read_lock()


def formula_resources() -> dict[str, "generator.Resource"]:
    found = re.findall(r'^  resource "([^"]+)" do\n    url "([^"]+)"\n    sha256 "([0-9a-f]{64})"\n  end\n', FORMULA, re.M)
    assert len(found) == FORMULA.count("resource \""), "a resource block the checks cannot read"
    return {name: generator.Resource(name, url, sha) for name, url, sha in found}


def test_one_resource_per_locked_package_except_those_homebrew_provides():
    expected = set(LOCK.packages) - set(generator.FROM_HOMEBREW)
    assert set(formula_resources()) == expected
    for formula in {generator.FROM_HOMEBREW[name] for name in LOCK.packages if name in generator.FROM_HOMEBREW}:
        assert f'  depends_on "{formula}"\n' in FORMULA


def test_every_resource_is_the_locked_version_of_its_package():
    for name, resource in formula_resources().items():
        locked = LOCK.packages[name]
        assert resource.sha256 in locked.hashes, f"{name}: sha256 not among the lock's for {locked.version}"
        filename = resource.url.rsplit("/", 1)[1]
        assert resource.url.startswith("https://files.pythonhosted.org/packages/"), resource.url
        assert filename.endswith((".tar.gz", ".zip", "-none-any.whl")), f"{name}: not an sdist or pure wheel: {filename}"
        if filename.endswith(".whl"):
            file_name, file_version = filename.split("-")[:2]
        else:
            file_name, file_version = re.sub(r"\.(tar\.gz|zip)$", "", filename).rsplit("-", 1)
        assert (generator.normalize(file_name), file_version) == (name, locked.version), filename


def test_the_formula_is_exactly_what_the_generator_writes():
    """No hand edits: re-rendered from the lock and its own resources, it is the same text."""
    if 'using: :git' in FORMULA:
        source = generator.Source()
    else:
        url, sha = re.search(r'^  url "([^"]+)"\n  sha256 "([0-9a-f]{64})"', FORMULA, re.M).groups()
        source = generator.Source(url, sha)
    rendered = generator.render_formula(LOCK, list(formula_resources().values()), generator.project_version(), source,
                                        generator.TINY_MODEL.read_text())
    assert rendered == FORMULA, "packaging/homebrew/localllm.rb differs from the generator's output: regenerate it"


def test_the_formula_targets_the_locked_python_and_platform():
    assert (LOCK.target_python, LOCK.target_platform) == (locker.TARGET_PYTHON, locker.TARGET_PLATFORM)
    assert f'  depends_on "python@{LOCK.target_python}"\n' in FORMULA
    assert "depends_on arch: :arm64" in FORMULA and "depends_on :macos" in FORMULA


def test_the_formula_builds_llama_cpp_with_metal_serves_and_tests_a_generation():
    install = FORMULA[FORMULA.index("  def install"):FORMULA.index("  service do")]
    assert "-DGGML_METAL=ON" in install and "virtualenv_install_with_resources" in install
    assert 'run [opt_bin/"localllm", "serve"]' in FORMULA and "keep_alive crashed: true" in FORMULA
    test = FORMULA[FORMULA.index("  test do"):]
    assert '#{bin}/localllm --version' in test and "#{bin}/localllm run" in test


def pyproject_requirements() -> list:
    from packaging.requirements import Requirement

    environment = {"sys_platform": "darwin", "platform_machine": "arm64", "platform_system": "Darwin",
                   "python_version": LOCK.target_python, "python_full_version": f"{LOCK.target_python}.0",
                   "os_name": "posix", "implementation_name": "cpython", "extra": ""}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def test_the_lock_holds_exactly_pyprojects_dependencies_at_allowed_versions():
    required = {generator.normalize(r.name): r for r in pyproject_requirements()}
    direct = {name for name, p in LOCK.packages.items() if p.direct}
    stale = ("pyproject.toml's dependencies changed: run `pip install -e '.[lock]' && python packaging/lock.py && "
             "python packaging/homebrew/generate_formula.py` and commit both files (packaging/README.md)")
    assert direct == set(required), f"{stale} (lock: {sorted(direct ^ set(required))})"
    for name, requirement in required.items():
        assert requirement.specifier.contains(LOCK.packages[name].version, prereleases=True), f"{name}: {stale}"
    assert all(p.hashes for p in LOCK.packages.values())


ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="Ruby is not installed (apt-get install ruby)")


@ruby
def test_ruby_accepts_the_formula():
    r = subprocess.run(["ruby", "-c", str(FORMULA_PATH)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stderr


@ruby
def test_ruby_reads_back_the_embedded_test_model_script_verbatim():
    start = FORMULA.index("<<~'PYTHON'\n")
    end = FORMULA.index("    PYTHON\n", start) + len("    PYTHON\n")
    program = f"text = {FORMULA[start:end]}STDOUT.write(text)\n"
    r = subprocess.run(["ruby", "-e", program], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == generator.TINY_MODEL.read_text()


def test_the_formula_tests_generation_runs(tmp_path, isolated_home):
    """What the formula's `test do` runs, here with this checkout's llama.cpp."""
    model = tmp_path / "tiny.gguf"
    subprocess.run([sys.executable, str(generator.TINY_MODEL), str(model)], check=True, timeout=120)
    r = run_cli("run", str(model), "Hello", "--backend", "llamacpp", "--temperature", "0", "--max-tokens", "8",
                "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"[a-z ]+", r.stdout.strip()), repr(r.stdout)
