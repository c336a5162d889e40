"""Model names: `name[:tag]`, `hf.co/owner/repo[:quant]`, and telling them from paths.

A `ModelName` is what the store files a manifest under. Catalog and imported names are
lower case (`llama3.2:1b`, `mine:latest`); hub names keep the repo's spelling and an
upper-case quant tag (`hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`). Quant labels
are also read out of GGUF file names here, so the hub and the catalog agree on them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from localllm.registry.errors import InvalidModelNameError

HUB_PREFIX = "hf.co/"
_HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")
_LOCAL_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
_HUB_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Quant labels as they appear in GGUF file names: Q4_K_M, q8_0, IQ4_XS, Q4_0_4_4, BF16, ...
_QUANT = re.compile(
    r"(?:^|[-._/])("
    r"I?Q[1-8](?:_[01K])?(?:_\d_\d)?(?:_(?:XXS|XS|XL|NL|S|M|L))?"
    r"|TQ[12]_0|MXFP4|BF16|FP16|F16|F32"
    r")(?=[-._/]|$)",
    re.IGNORECASE,
)
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class ModelName:
    """A parsed model name; `tag` is None when the user gave none."""

    name: str
    tag: str | None = None

    @property
    def is_hub(self) -> bool:
        return self.name.startswith(HUB_PREFIX)

    @property
    def hub_repo(self) -> str | None:
        """`owner/repo` for a hub name, else None."""
        return self.name[len(HUB_PREFIX):] if self.is_hub else None

    def with_tag(self, tag: str) -> "ModelName":
        return ModelName(self.name, normalize_tag(tag, hub=self.is_hub))

    def segments(self) -> list[str]:
        """Path segments for the store: safe by construction (validated when parsed)."""
        return self.name.split("/")

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}" if self.tag else self.name


def normalize_tag(tag: str, hub: bool) -> str:
    if not _TAG.match(tag):
        raise InvalidModelNameError(
            f"{tag!r} is not a valid tag: use letters, digits, '.', '_' and '-' (for example `1b` or `Q4_K_M`)"
        )
    return tag.upper() if hub and tag.lower() != "latest" else tag.lower()


def is_path_syntax(text: str) -> bool:
    """True for text written as a file path (by its form alone: nothing is looked up)."""
    return text.endswith(".gguf") or text.startswith(("/", "./", "../", "~", ".\\"))


def looks_like_path(text: str) -> bool:
    """True for what the user surely meant as a file or folder rather than a name."""
    return is_path_syntax(text) or os.path.exists(os.path.expanduser(text))


def parse_model_name(text: str) -> ModelName:
    """Parse `name[:tag]` or a hub reference; raise InvalidModelNameError with the fix."""
    raw = text.strip()
    if not raw:
        raise InvalidModelNameError("empty model name: give a name such as `llama3.2:1b` or `hf.co/owner/repo`")
    for prefix in _HUB_PREFIXES:
        if raw.lower().startswith(prefix):
            return _parse_hub(raw[len(prefix):], text)
    base, _, tag = raw.partition(":")
    if ":" in tag:
        raise InvalidModelNameError(f"{text!r}: a model name has at most one ':' (name:tag)")
    segments = base.lower().split("/")
    if len(segments) > 2 or not all(_LOCAL_SEGMENT.match(s) for s in segments) or ".." in base:
        if looks_like_path(raw):
            raise InvalidModelNameError(
                f"{text!r} is a file path, and this command takes a model name: "
                f"`localllm import {raw} --name NAME` adds the file to the store under a name"
            )
        raise InvalidModelNameError(
            f"{text!r} is neither a model name nor an existing file: names look like `llama3.2:1b` "
            "or `hf.co/owner/repo:Q4_K_M`"
        )
    if raw.endswith(":"):
        raise InvalidModelNameError(f"{text!r}: the tag after ':' is empty (for example `{base}:latest`)")
    return ModelName("/".join(segments), normalize_tag(tag, hub=False) if tag else None)


def _parse_hub(rest: str, original: str) -> ModelName:
    rest = rest.rstrip("/")
    repo, _, tag = rest.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_HUB_SEGMENT.match(p) for p in parts) or ".." in repo:
        raise InvalidModelNameError(
            f"{original!r}: a Hugging Face name is `hf.co/owner/repo[:quant]`, for example "
            "`hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`"
        )
    if rest.endswith(":"):
        raise InvalidModelNameError(f"{original!r}: the quant after ':' is empty (for example `:Q4_K_M`)")
    return ModelName(HUB_PREFIX + repo, normalize_tag(tag, hub=True) if tag else None)


def quant_from_filename(path: str) -> str | None:
    """The quant label in a GGUF file's name or folder (`Q4_K_M`), upper case, or None."""
    stem = _SPLIT_PART.sub("", path)
    stem = re.sub(r"\.gguf$", "", stem, flags=re.IGNORECASE)
    matches = _QUANT.findall(stem)
    return matches[-1].upper() if matches else None


def split_part(path: str) -> tuple[int, int] | None:
    """(part, of) for a split GGUF file name such as `x-00001-of-00003.gguf`."""
    m = _SPLIT_PART.search(path)
    return (int(m.group(1)), int(m.group(2))) if m else None


def split_stem(path: str) -> str:
    """The name shared by all parts of a split GGUF (`x-00001-of-00003.gguf` -> `x`)."""
    return _SPLIT_PART.sub("", path)


def is_gguf_weights(path: str) -> bool:
    """A .gguf file holding model weights (not a vision projector or an imatrix)."""
    base = path.rsplit("/", 1)[-1].lower()
    return base.endswith(".gguf") and "mmproj" not in base and "imatrix" not in base
