"""The curated catalog (`catalog.json`, shipped as package data): short names such as
`llama3.2:1b` mapped to a GGUF source (Hugging Face repo and file per quant) and, where
one exists, an MLX source (an mlx-community repo).

The catalog holds no hashes: the expected sha256 of every file comes from the hub's
metadata at pull time. A tag is `size` (the default quant) or `size-quant` (`1b-q8_0`);
no tag, or `latest`, means the family's default size.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from localllm.registry.errors import ModelNotFoundError
from localllm.registry.names import ModelName

DEFAULT_QUANT = "Q4_K_M"


@dataclass(frozen=True)
class CatalogSource:
    """Where one format of a catalog model lives on the hub."""

    format: str  # "gguf" | "mlx"
    repo: str
    files: dict[str, str] = field(default_factory=dict)  # quant -> file in the repo (GGUF only)


@dataclass(frozen=True)
class CatalogChoice:
    """A catalog name resolved to one size and quant."""

    name: ModelName  # canonical: llama3.2:1b, or llama3.2:1b-q8_0 for a non-default quant
    quant: str
    license: str | None
    description: str
    gguf: CatalogSource | None
    mlx: CatalogSource | None

    def source(self, fmt: str) -> CatalogSource | None:
        return self.gguf if fmt == "gguf" else self.mlx


class Catalog:
    def __init__(self, data: dict):
        self._models: dict = data["models"]
        self.default_quant: str = data.get("default_quant", DEFAULT_QUANT)

    @classmethod
    def from_json(cls, text: str) -> "Catalog":
        return cls(json.loads(text))

    def families(self) -> list[str]:
        return sorted(self._models)

    def all_names(self) -> list[str]:
        return [f"{fam}:{tag}" for fam in self.families() for tag in self._models[fam]["tags"]]

    def __contains__(self, family: str) -> bool:
        return family in self._models

    def choose(self, name: ModelName) -> CatalogChoice | None:
        """The catalog entry for `name`, or None when the family is not in the catalog.
        Raises ModelNotFoundError for a known family with an unknown tag."""
        family = self._models.get(name.name)
        if family is None:
            return None
        tags: dict = family["tags"]
        tag = name.tag if name.tag and name.tag != "latest" else family["default_tag"]
        size, quant = tag, None
        if size not in tags:
            size, _, quant = tag.partition("-")
            if size not in tags or not quant:
                raise ModelNotFoundError(
                    f"{name.name} has no tag {tag!r}: available tags are {', '.join(tags)}, "
                    f"each with an optional quant suffix such as `{next(iter(tags))}-q8_0`"
                )
            quant = quant.upper()
        entry = tags[size]
        quant = quant or self.default_quant
        canonical = size if quant == self.default_quant else f"{size}-{quant.lower()}"
        gguf = entry.get("gguf")
        mlx = entry.get("mlx")
        return CatalogChoice(
            name=ModelName(name.name, canonical),
            quant=quant,
            license=entry.get("license", family.get("license")),
            description=family.get("description", ""),
            gguf=CatalogSource("gguf", gguf["repo"], dict(gguf.get("files", {}))) if gguf else None,
            mlx=CatalogSource("mlx", mlx["repo"]) if mlx else None,
        )

    def suggestions(self, text: str, extra: list[str] = (), n: int = 3) -> list[str]:
        """Catalog (and `extra`) names close to `text`, best first."""
        base = text.split(":", 1)[0].lower()
        pool = list(self.families()) + [e.split(":", 1)[0] for e in extra]
        close = difflib.get_close_matches(base, sorted(set(pool)), n=n, cutoff=0.6)
        if not close:
            close = [f for f in self.families() if base and (base in f or f in base)][:n]
        return close


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The catalog shipped with the package (read once; it never changes at run time)."""
    text = resources.files("localllm.registry").joinpath("catalog.json").read_text(encoding="utf-8")
    return Catalog.from_json(text)
