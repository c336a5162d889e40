"""Reads the `.metal` files of this package: a header and named kernel bodies.

A file holds what `mx.fast.metal_kernel` takes for one op. Lines before
`// === header ===` describe the file; the header runs to the first
`// === kernel NAME ===` line, and each kernel body to the next one. A test can pass
its own text (a mutated copy) through `parse` instead of reading the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_MARKER = re.compile(r"^// === (header|kernel (\w+)) ===[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class MetalSource:
    header: str
    kernels: dict[str, str]


def parse(text: str) -> MetalSource:
    markers = list(_MARKER.finditer(text))
    if not markers or markers[0].group(1) != "header":
        raise ValueError("a .metal file of this package starts its code with '// === header ==='")
    header = ""
    kernels: dict[str, str] = {}
    for i, marker in enumerate(markers):
        end = markers[i + 1].start() if i + 1 < len(markers) else len(text)
        chunk = text[marker.end():end].strip("\n") + "\n"
        if marker.group(2):
            kernels[marker.group(2)] = chunk
        else:
            header = chunk
    return MetalSource(header, kernels)


def read(filename: str) -> str:
    return (PACKAGE_DIR / filename).read_text()


def load(filename: str) -> MetalSource:
    return parse(read(filename))
