"""Every package under localllm/ is listed for installation (a plain `pip install .`
only ships what pyproject.toml names, unlike the editable install tests run with)."""

import tomllib

from conftest import REPO


def test_every_package_folder_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(path.relative_to(REPO).parent.parts)
        for path in (REPO / "localllm").rglob("__init__.py")
    }
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
    for name, folder in config["package-dir"].items():
        assert (REPO / folder / "__init__.py").is_file(), name
