"""Every package folder and every data file is listed for installation. A plain `pip
install .` (and the wheel, and Homebrew) ships only what pyproject.toml names, unlike the
editable install the tests run with, so a forgotten folder or data file works here and
breaks for users. The checks discover folders and files themselves: a new backend folder,
a kernels subpackage or a template file is covered without touching this test.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from conftest import REPO

SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
# Files in package folders that are not meant to ship.
NOT_DATA = ("*.py", "*.pyc", "*.pyo", ".*")


def package_roots() -> dict[str, Path]:
    """Import name -> source folder, from pyproject's package-dir (the repo's top-level
    cpu_backend/, metal_kernels/ and models/ install under `localllm.`)."""
    return {name: REPO / folder for name, folder in SETUPTOOLS["package-dir"].items()}


def source_packages() -> dict[str, Path]:
    """Every package in the source tree: import name -> folder."""
    found = {}
    for root_name, root in package_roots().items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(root).parts
            found.setdefault(".".join((root_name, *relative)), init.parent)
    return found


def owner(path: Path, packages: dict[str, Path]) -> str:
    """The package whose folder holds `path` most closely."""
    return max((name for name, folder in packages.items() if folder in path.parents), key=lambda n: len(packages[n].parts))


def data_files(packages: dict[str, Path]) -> list[Path]:
    """Every file under the package roots that is not Python source."""
    files = []
    for root in package_roots().values():
        for path in root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and not any(fnmatch.fnmatch(path.name, p) for p in NOT_DATA):
                files.append(path)
    return files


def glob_match(relative: str, pattern: str) -> bool:
    """setuptools' package-data globbing: `*` stays within one folder (unlike fnmatch's);
    a `**` pattern is taken leniently, as the wheel test checks the real result."""
    if "**" in pattern:
        return fnmatch.fnmatch(relative, pattern)
    parts, wanted = relative.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatch.fnmatch(a, b) for a, b in zip(parts, wanted))


def is_package_data(path: Path, package: str, folder: Path) -> bool:
    patterns = SETUPTOOLS.get("package-data", {})
    relative = path.relative_to(folder).as_posix()
    return any(glob_match(relative, p) for key in (package, "*") for p in patterns.get(key, []))


def test_every_package_folder_is_installed():
    listed = set(SETUPTOOLS["packages"])
    found = source_packages()
    assert set(found) <= listed, f"add to pyproject.toml's [tool.setuptools] packages: {sorted(set(found) - listed)}"
    for name, folder in SETUPTOOLS["package-dir"].items():
        assert (REPO / folder / "__init__.py").is_file(), name


def test_no_python_folder_without_an_init():
    """A folder of modules without __init__.py is skipped by the package list above and
    silently left out of the wheel."""
    packages = set(source_packages().values())
    for root in package_roots().values():
        for module in root.rglob("*.py"):
            if "__pycache__" not in module.parts:
                assert module.parent in packages, f"{module.parent.relative_to(REPO)} has modules but no __init__.py"


def test_every_data_file_is_package_data():
    packages = source_packages()
    missing = []
    for path in data_files(packages):
        package = owner(path, packages)
        if not is_package_data(path, package, packages[package]):
            missing.append(str(path.relative_to(REPO)))
    assert not missing, (f"not matched by pyproject.toml's [tool.setuptools.package-data], so not installed: {missing} "
                         f"(add a pattern, e.g. to the \"*\" key)")


def test_the_data_files_this_app_needs_exist():
    """The checks above pass vacuously on an empty tree: these must be among them."""
    names = {p.relative_to(REPO).as_posix() for p in data_files(source_packages())}
    assert {"localllm/registry/catalog.json", "localllm/tui/chat.tcss"} <= names
