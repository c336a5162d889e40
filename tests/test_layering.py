"""The layering rule, read from the source: shared layers (engine, kvcache, tokenizer,
speculative, registry, formats) and frontends (cli, commands, runtime, server, tui) import
no backend library (llama_cpp, mlx) and no backend folder (cpu_backend, models,
metal_kernels), neither at module level nor inside a function. Only `localllm/backend/`
(the protocol and the backend table) reaches the backend folders.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "localllm"
BACKEND_LIBRARIES = ("llama_cpp", "mlx")
BACKEND_FOLDERS = ("localllm.cpu_backend", "localllm.models", "localllm.metal_kernels")
CHECKED = sorted(p for p in PACKAGE.rglob("*.py") if "backend" not in p.relative_to(PACKAGE).parts[:1])


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source` (a module of `package`),
    wherever it sits: module level, functions, conditionals."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in BACKEND_LIBRARIES + BACKEND_FOLDERS)


def test_the_walk_sees_what_it_must_refuse():
    """The checker itself: absolute, relative and in-function imports are all caught."""
    source = "import json\nimport mlx.core as mx\ndef f():\n    from ..cpu_backend import vocab\n    from . import stops\n"
    bad = [(line, m) for line, m in imported_modules(source, "localllm.engine") if forbidden(m)]
    assert bad == [(2, "mlx.core"), (4, "localllm.cpu_backend"), (4, "localllm.cpu_backend.vocab")]
    assert not forbidden("localllm.modelsx") and not forbidden("localllm.backend.select")


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_backend_import_outside_the_backend_seam(path):
    package = ".".join(("localllm", *path.relative_to(PACKAGE).parent.parts))
    modules = imported_modules(path.read_text(encoding="utf-8"), package)
    bad = [f"line {line}: {module}" for line, module in modules if forbidden(module)]
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports a backend: {bad}"
