"""Read and check a GGUF file's header without loading its weights.

Used before a backend loads a file (so a missing, foreign, truncated or unsupported file
gets a clear one-line error instead of a library crash) and by `show` and the load
preflight. Large metadata arrays (token lists) are skipped, not decoded, unless asked for.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from localllm.types import ModelInfo
from localllm.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised as their length (token lists, merges, scores).
_MAX_ARRAY = 64


class _Reader:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelFileError(
                f"{self.path}: the GGUF header ends early, so the file is truncated: download it again"
            )
        return data

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 30:
            raise ModelFileError(f"{self.path}: corrupted GGUF header (a {n}-byte string): download it again")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep_arrays: bool):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype, n = self.scalar("<I"), self.scalar("<Q")
            if itype in _SCALARS and not keep_arrays and n > _MAX_ARRAY:
                self.f.seek(n * struct.calcsize(_SCALARS[itype]), os.SEEK_CUR)
                return _ArrayLength(n)
            if not keep_arrays and n > _MAX_ARRAY:
                for _ in range(n):
                    self.value(itype, False)
                return _ArrayLength(n)
            return [self.value(itype, keep_arrays) for _ in range(n)]
        raise ModelFileError(f"{self.path}: corrupted GGUF header (unknown value type {vtype}): download it again")


class _ArrayLength(int):
    """A skipped metadata array, remembered by its length."""


def read_header(path: str | os.PathLike, keep_arrays: bool = False) -> tuple[dict, list[tuple]]:
    """Return (metadata, tensors) where tensors are (name, shape, ggml_type, offset)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file: check the path, or `localllm list` for pulled models")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a GGUF model file")
    with open(path, "rb") as f:
        r = _Reader(f, path)
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFileError(
                f"{path}: not a GGUF model file (it starts with {magic!r}): give a .gguf file, "
                "or convert the model with llama.cpp's convert_hf_to_gguf.py"
            )
        version = r.scalar("<I")
        if version not in (2, 3):
            raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 and 3 are): re-convert the model")
        n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ModelFileError(f"{path}: corrupted GGUF header: download it again")
        meta: dict = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = r.value(r.scalar("<I"), keep_arrays)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.scalar("<I")
            if n_dims > 8:
                raise ModelFileError(f"{path}: corrupted GGUF tensor table: download it again")
            shape = tuple(r.scalar("<Q") for _ in range(n_dims))
            tensors.append((name, shape, r.scalar("<I"), r.scalar("<Q")))
        align = int(meta.get("general.alignment", 32))
        data_start = -(-f.tell() // align) * align
    meta["_data_start"] = data_start
    return meta, tensors


def tensor_nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n = 1
    for d in shape:
        n *= d
    return n // block * type_size


def check_complete(path: str | os.PathLike, meta: dict, tensors: list[tuple]) -> int:
    """Raise if the file is shorter than its tensor table says; return the weight bytes."""
    end = 0
    total = 0
    for name, shape, ggml_type, offset in tensors:
        try:
            n = tensor_nbytes(shape, ggml_type)
        except (ValueError, KeyError):
            raise ModelFileError(f"{path}: tensor {name} has unknown type {ggml_type}: file corrupted or too new") from None
        total += n
        end = max(end, offset + n)
    if not tensors:  # a vocab-only file ends with its header
        return 0
    size = os.path.getsize(path)
    need = meta["_data_start"] + end
    if size < need:
        raise ModelFileError(
            f"{path}: truncated: the file has {size:,} bytes but its tensors need {need:,}: download it again"
        )
    return total


FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}


def inspect_gguf(path: str | os.PathLike) -> ModelInfo:
    """Validate a GGUF file (exists, magic, header, not truncated) and describe it."""
    meta, tensors = read_header(path)
    weights = check_complete(path, meta, tensors)
    arch = str(meta.get("general.architecture", ""))
    if not arch:
        raise ModelFileError(f"{path}: GGUF header has no general.architecture: the file is not a model")
    n_params = 0
    for _, shape, _, _ in tensors:
        n = 1
        for d in shape:
            n *= d
        n_params += n
    template = meta.get("tokenizer.chat_template")
    vocab = meta.get("tokenizer.ggml.tokens")
    return ModelInfo(
        path=str(path),
        architecture=arch,
        name=str(meta.get("general.name", "")),
        context_length=int(meta.get(f"{arch}.context_length", 0) or 0),
        vocab_size=int(vocab) if vocab is not None else 0,
        n_params=n_params,
        file_type=FILE_TYPES.get(meta.get("general.file_type", -1), "unknown"),
        chat_template=template if isinstance(template, str) else None,
        metadata={k: v for k, v in meta.items() if not isinstance(v, list)} | {"_weights_bytes": weights},
    )
