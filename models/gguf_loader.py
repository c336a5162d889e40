"""Read a GGUF file into MLX weights: metadata plus every tensor repacked.

The file is memory-mapped and never held twice: each tensor is repacked from the mapping
a row chunk at a time, each chunk's pages are dropped from this process's resident set as
soon as they are read (`madvise(MADV_DONTNEED)`; a read-only file mapping refetches from
the page cache if touched again), and repacked arrays are written in place into MLX's
buffers, so peak RSS while loading is the repacked weights plus one row chunk's
temporaries, not the file plus the weights. The header is read by `localllm.formats.gguf`
(`gguf.GGUFReader` makes a numpy object per vocabulary string: 150 MB of them for a
49k-token vocabulary).
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


def _drop_pages(mapping: mmap.mmap, start: int, length: int) -> None:
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if advice is None or length <= 0:
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


def _tensor_view(mapping: mmap.mmap, offset: int, shape: tuple[int, ...], qtype) -> np.ndarray:
    """The tensor's bytes in the mapping, as gguf's dequantizer expects them: float
    elements for F32/F16, raw bytes [rows, bytes per row] otherwise (BF16 included)."""
    from gguf import GGMLQuantizationType as T
    from gguf.constants import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    nbytes = n // block * type_size
    if qtype in (T.F32, T.F16):
        dtype = np.float32 if qtype == T.F32 else np.float16
        return np.frombuffer(mapping, dtype=dtype, count=n, offset=offset).reshape(shape)
    raw = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset)
    return raw.reshape(*shape[:-1], shape[-1] // block * type_size)


def load_gguf(path: str | os.PathLike, wanted=None, keep_blocks: bool | None = None) -> GGUFWeights:
    """Load every tensor (or those whose name `wanted(name)` accepts). `keep_blocks`
    (default: on Metal) keeps the types the Metal kernels read in block layout."""
    from gguf import GGMLQuantizationType

    from localllm.formats.gguf import read_header, tensor_nbytes

    if keep_blocks is None:
        keep_blocks = blocks_by_default()
    path = Path(path)
    meta, tensors = read_header(path, keep_token_texts=False)  # long arrays (the vocabulary) are skipped
    data_start = meta.pop("_data_start")
    out = GGUFWeights(path, meta)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
        for name, gguf_shape, ggml_type, offset in tensors:
            if wanted is not None and not wanted(name):
                continue
            qtype = GGMLQuantizationType(ggml_type)
            shape = tuple(int(d) for d in reversed(gguf_shape))  # GGUF lists dims innermost first
            start = data_start + offset
            nbytes = tensor_nbytes(gguf_shape, ggml_type)
            row_bytes = nbytes // shape[0] if shape and shape[0] else nbytes

            def rows_done(lo: int, hi: int, start=start, row_bytes=row_bytes) -> None:
                _drop_pages(mapping, start + lo * row_bytes, (hi - lo) * row_bytes)

            try:
                weight = repack(_tensor_view(mapping, start, shape, qtype), qtype, shape, name,
                                keep_blocks=keep_blocks, rows_done=rows_done)
            except UnsupportedTensorType as e:
                raise ModelFileError(f"{path}: {e}") from None
            mx.eval(*(weight_arrays(weight) if not isinstance(weight, mx.array) else [weight]))
            out.tensors[name] = weight
            out.file_types[name] = qtype.name
            _drop_pages(mapping, start, nbytes)
    return out
