"""Read a GGUF file into MLX weights: metadata plus every tensor repacked.

The file is memory-mapped (`gguf.GGUFReader`) and never held twice: each tensor is
repacked from the mapping, then its pages are dropped from this process's resident set
(`madvise(MADV_DONTNEED)`; a read-only file mapping refetches from the page cache if
touched again), so peak RSS while loading is the repacked weights plus one tensor's
temporaries, not the file plus the weights.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from localllm.errors import ModelFileError
from localllm.models.gguf_repack import UnsupportedTensorType, repack
from localllm.models.weights import Weight, weight_arrays

_PAGE = mmap.PAGESIZE


@dataclass
class GGUFWeights:
    """A GGUF file's metadata (scalars and short arrays) and its tensors, by GGUF name."""

    path: Path
    metadata: dict
    tensors: dict[str, Weight | mx.array] = field(default_factory=dict)
    file_types: dict[str, str] = field(default_factory=dict)  # tensor name -> ggml type name

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def nbytes(self) -> int:
        total = 0
        for t in self.tensors.values():
            total += t.nbytes if isinstance(t, mx.array) else sum(a.nbytes for a in weight_arrays(t))
        return total


def read_metadata(reader, max_array: int = 64) -> dict:
    """Scalars and arrays of at most `max_array` items (token lists are skipped)."""
    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if len(f.data) > max_array:
            continue
        try:
            meta[key] = f.contents()
        except Exception:  # an odd field type: the models never read it
            continue
    return meta


def _drop_pages(mapping: mmap.mmap | None, start: int, length: int) -> None:
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if mapping is None or advice is None or length <= 0:
        return
    lo = start // _PAGE * _PAGE
    try:
        mapping.madvise(advice, lo, min(len(mapping), start + length) - lo)
    except (OSError, ValueError):
        pass  # only an optimisation


def blocks_by_default() -> bool:
    """Keep Q4_K/Q6_K/Q8_0 in GGUF block layout where Metal kernels read them."""
    from localllm.metal_kernels.quant_matmul import metal_kernels

    return metal_kernels() is not None


def load_gguf(path: str | os.PathLike, wanted=None, keep_blocks: bool | None = None) -> GGUFWeights:
    """Load every tensor (or those whose name `wanted(name)` accepts). `keep_blocks`
    (default: on Metal) keeps the types the Metal kernels read in block layout."""
    import gguf

    if keep_blocks is None:
        keep_blocks = blocks_by_default()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except (ValueError, OSError) as e:
        raise ModelFileError(f"{path}: cannot read this GGUF file ({e}): download it again") from None
    out = GGUFWeights(path, read_metadata(reader))
    mapping = getattr(reader.data, "_mmap", None)
    try:
        for t in reader.tensors:
            if wanted is not None and not wanted(t.name):
                continue
            shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
            try:
                weight = repack(t.data, t.tensor_type, shape, t.name, keep_blocks=keep_blocks)
            except UnsupportedTensorType as e:
                raise ModelFileError(f"{path}: {e}") from None
            mx.eval(*(weight_arrays(weight) if not isinstance(weight, mx.array) else [weight]))
            out.tensors[t.name] = weight
            out.file_types[t.name] = t.tensor_type.name
            _drop_pages(mapping, int(t.data_offset), int(t.n_bytes))
    finally:
        del reader
    return out


def metadata_array(path: str | os.PathLike, key: str) -> list | None:
    """One (possibly long) metadata array, e.g. a per-layer pattern."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r")
    f = reader.fields.get(key)
    return None if f is None else list(np.atleast_1d(f.contents()))
