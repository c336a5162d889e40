"""Generate packaging/homebrew/localllm.rb from packaging/requirements.lock.

The formula is a Python virtualenv formula: one `resource` per locked runtime package (its
sdist on PyPI, as Homebrew builds from source; a pure-Python wheel where a version has no
sdist), except the few that a Homebrew formula provides instead (FROM_HOMEBREW). Each url
and sha256 comes from PyPI's JSON simple API (PEP 691) at generation time, and the sha256
must be one the lock recorded for that version, so the formula installs what was locked. Generating needs the network;
checking the formula against the lock (tests/packaging/) does not.

Rerun after every `python packaging/lock.py`:
    python packaging/homebrew/generate_formula.py
Until a release tarball is published, the formula builds the git checkout it sits in; for a
release: --source-url URL --source-sha256 HEX.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCK = REPO / "packaging" / "requirements.lock"
FORMULA = HERE / "localllm.rb"
TINY_MODEL = HERE / "tiny_model.py"
INDEX_URL = "https://pypi.org/simple"

# Locked packages that a Homebrew formula provides instead of a resource. MLX's sdist
# fetches metal-cpp while it builds, which a Homebrew build cannot count on, and its
# Metal library (mlx-metal) is published as wheels only; Homebrew's `mlx` formula builds
# both with Xcode's Metal compiler and puts them on the virtualenv's path.
FROM_HOMEBREW = {"mlx": "mlx", "mlx-metal": "mlx"}


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    hashes: frozenset[str]  # sha256 of every file of this version, as the lock recorded them
    direct: bool  # required by pyproject.toml itself, not only by another package


@dataclass(frozen=True)
class Lock:
    target_python: str  # e.g. "3.13": the formula depends on python@3.13
    target_platform: str
    packages: dict[str, LockedPackage]


@dataclass(frozen=True)
class Resource:
    name: str
    url: str
    sha256: str


def normalize(name: str) -> str:
    """PEP 503 name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> Lock:
    text = path.read_text()
    header = dict(re.findall(r"^# (target-\w+): (\S+)$", text, re.M))
    packages = {}
    # An entry: `name==version \`, its `--hash=sha256:...` lines, then `# via` comments.
    for match in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})*)\n((?:\s+#.*\n?)*)", text, re.M):
        name, version, hashes, via = match.groups()
        packages[normalize(name)] = LockedPackage(
            name=normalize(name), version=version, hashes=frozenset(re.findall(r"sha256:([0-9a-f]{64})", hashes)),
            direct="localllm (pyproject.toml)" in via,
        )
    if "target-python" not in header or "target-platform" not in header or not packages:
        raise SystemExit(f"{path}: not a lock written by packaging/lock.py (run it again)")
    return Lock(header["target-python"], header["target-platform"], packages)


def find_distribution(package: LockedPackage, index_url: str = INDEX_URL) -> Resource:
    """The file of `package` that the formula installs: its sdist (Homebrew builds from
    source), or, for a version published only as a pure-Python wheel, that wheel (Homebrew
    installs `-none-any.whl` resources as they are). Only a file whose sha256 the lock
    recorded will do."""
    request = urllib.request.Request(
        f"{index_url}/{package.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        files = [f for f in json.load(response)["files"] if f.get("hashes", {}).get("sha256") in package.hashes]
    for suffixes in ((".tar.gz", ".zip"), ("-none-any.whl",)):
        chosen = [f for f in files if f["filename"].endswith(suffixes)]
        if chosen:
            best = min(chosen, key=lambda f: not f["filename"].endswith(".tar.gz"))  # .tar.gz before .zip
            return Resource(package.name, best["url"], best["hashes"]["sha256"])
    raise SystemExit(
        f"{package.name}=={package.version} has neither an sdist nor a pure-Python wheel on {index_url} "
        f"matching the lock: add it to FROM_HOMEBREW in {Path(__file__).name} with the formula that "
        f"provides it, or pin a version that publishes one in pyproject.toml"
    )


@dataclass(frozen=True)
class Source:
    """Where Homebrew gets localllm itself."""

    url: str | None = None  # a release tarball; None: the git checkout the formula sits in
    sha256: str | None = None

    def ruby(self, version: str) -> str:
        if self.url:
            return f'  url "{self.url}"\n  sha256 "{self.sha256}"'
        return (
            "  # Until a release tarball is published: the git checkout this file sits in (its\n"
            "  # committed HEAD). Homebrew reads __dir__ through symlinks, so a local tap can link here.\n"
            '  url "file://#{File.expand_path("../..", __dir__)}", using: :git\n'
            f'  version "{version}"'
        )


def render_formula(lock: Lock, resources: list[Resource], version: str, source: Source, tiny_model: str) -> str:
    """The formula's text: a pure function of its inputs, so a test can re-render it offline."""
    homebrew_deps = sorted(set(FROM_HOMEBREW[name] for name in lock.packages if name in FROM_HOMEBREW))
    resource_blocks = "\n".join(
        f'  resource "{r.name}" do\n    url "{r.url}"\n    sha256 "{r.sha256}"\n  end\n'
        for r in sorted(resources, key=lambda r: r.name)
    )
    test_script = "".join(f"      {line}" if line.strip() else "\n" for line in tiny_model.splitlines(keepends=True))
    deps = "".join(f'  depends_on "{name}"\n' for name in homebrew_deps)
    return f'''\
# Generated by packaging/homebrew/generate_formula.py from packaging/requirements.lock.
# Do not edit: change pyproject.toml, then `python packaging/lock.py` and
# `python packaging/homebrew/generate_formula.py` (see packaging/README.md).
class Localllm < Formula
  include Language::Python::Virtualenv

  desc "Local LLM inference: terminal chat, CLI and an OpenAI/Ollama-compatible server"
{source.ruby(version)}
  license "MIT"

  depends_on "cmake" => :build # llama-cpp-python (scikit-build-core), sentencepiece
  depends_on "ninja" => :build # llama-cpp-python, numpy (meson-python)
  depends_on "pkgconf" => :build
  depends_on "rust" => :build # tokenizers, hf-xet (maturin)
  depends_on arch: :arm64 # the lock resolves for {lock.target_platform}
  depends_on :macos
{deps}  depends_on "python@{lock.target_python}"

{resource_blocks}
  def install
    # llama.cpp with Metal on Apple Silicon; the shader library is embedded in the binary,
    # so nothing has to find a .metallib at run time.
    ENV["CMAKE_ARGS"] = "-DGGML_METAL=ON -DGGML_METAL_EMBED_LIBRARY=ON"
    virtualenv_install_with_resources
  end

  service do
    run [opt_bin/"localllm", "serve"]
    keep_alive crashed: true
    log_path var/"log/localllm.log"
    error_log_path var/"log/localllm.log"
  end

  test do
    assert_match "localllm #{{version}}", shell_output("#{{bin}}/localllm --version")

    # A tiny random-weight model (a test cannot download one): see packaging/homebrew/tiny_model.py.
    (testpath/"tiny_model.py").write <<~'PYTHON'
{test_script}    PYTHON
    system libexec/"bin/python", testpath/"tiny_model.py", testpath/"tiny.gguf"
    text = shell_output("#{{bin}}/localllm run #{{testpath}}/tiny.gguf Hello --backend llamacpp " \\
                        "--temperature 0 --max-tokens 8 --threads 1")
    assert_match(/\\A[a-z ]+\\z/, text.strip)
  end
end
'''


def project_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index-url", default=INDEX_URL, help=f"a PEP 691 simple index (default: {INDEX_URL})")
    parser.add_argument("--source-url", help="a release tarball of localllm (default: the git checkout)")
    parser.add_argument("--source-sha256", help="its sha256 (required with --source-url)")
    args = parser.parse_args()
    if bool(args.source_url) != bool(args.source_sha256):
        parser.error("--source-url and --source-sha256 go together")
    lock = read_lock()
    resources = [find_distribution(p, args.index_url) for name, p in sorted(lock.packages.items()) if name not in FROM_HOMEBREW]
    text = render_formula(lock, resources, project_version(), Source(args.source_url, args.source_sha256), TINY_MODEL.read_text())
    FORMULA.write_text(text)
    print(f"wrote {FORMULA.relative_to(REPO)}: {len(resources)} resources, python@{lock.target_python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
