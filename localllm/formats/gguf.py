"""Read and check a GGUF file's header without loading its weights.

Used before a backend loads a file (so a missing, foreign, truncated or unsupported file
gets a clear one-line error instead of a library crash) and by `show` and the load
preflight. Large metadata arrays (token lists) are skipped, not decoded, unless asked for.

The reader trusts nothing in the file: it opens it without blocking and only if it is a
regular file (a FIFO would hang the reader, a device would never end), bounds every
count and length by the bytes left in the file, refuses arrays nested deeper than
llama.cpp reads them, and checks the alignment before dividing by it. The values a
loader asserts on are checked in `gguf_checks`.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from localllm.types import ModelInfo
from localllm.errors import ModelFileError

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Arrays longer than this are summarised as their length (token lists, merges, scores).
_MAX_ARRAY = 64
# Arrays of arrays: llama.cpp reads none at all; one level is allowed for other tools.
_MAX_NESTING = 2
_MIN_BYTES = {_STRING: 8, _ARRAY: 12}  # the least a value of each type takes in the file


def _corrupted(path: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: corrupted GGUF header ({what}): download it again or re-convert the model")


def _cut_short(path: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: the GGUF header is truncated or corrupted ({what}): download it again")


class _Reader:
    def __init__(self, f, path: Path, size: int):
        self.f, self.path, self.size = f, path, size

    def left(self) -> int:
        return self.size - self.f.tell()

    def read(self, n: int) -> bytes:
        data = self.f.read(n) if n <= self.left() else b""
        if len(data) != n:
            raise ModelFileError(
                f"{self.path}: the GGUF header ends early, so the file is truncated: download it again"
            )
        return data

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > min(1 << 30, self.left()):
            raise _cut_short(self.path, f"a {n}-byte string with {self.left()} bytes left in the file")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep_arrays: bool, depth: int = 0, keep_texts: bool = False):
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= _MAX_NESTING:
                raise _corrupted(self.path, f"arrays nested more than {_MAX_NESTING} deep")
            itype, n = self.scalar("<I"), self.scalar("<Q")
            item_size = struct.calcsize(_SCALARS[itype]) if itype in _SCALARS else _MIN_BYTES.get(itype)
            if item_size is None:
                raise _corrupted(self.path, f"an array of unknown value type {itype}")
            if n * item_size > self.left():
                raise _cut_short(self.path, f"an array of {n} items with {self.left()} bytes left in the file")
            if itype in _SCALARS and not keep_arrays and n > _MAX_ARRAY:
                self.f.seek(n * item_size, os.SEEK_CUR)
                return _ArrayLength(n)
            if not keep_arrays and n > _MAX_ARRAY:
                if itype != _STRING:
                    for _ in range(n):
                        self.value(itype, False, depth + 1)
                    return _ArrayLength(n)
                seen: set[str] = set()
                duplicate = None
                for _ in range(n):
                    text = self.string()
                    if duplicate is None and text in seen:
                        duplicate = text
                    seen.add(text)
                return _ArrayLength(n, duplicate, seen if keep_texts else None)
            return [self.value(itype, keep_arrays, depth + 1) for _ in range(n)]
        raise _corrupted(self.path, f"unknown value type {vtype}")


class _ArrayLength(int):
    """A skipped metadata array, remembered by its length (and, for strings, the first
    text that occurs twice in it)."""

    def __new__(cls, n: int, duplicate: str | None = None, texts: set[str] | None = None):
        obj = super().__new__(cls, n)
        obj.duplicate = duplicate
        obj.texts = texts  # the vocabulary's token texts, until the checks have read them
        return obj


def open_model_file(path: Path):
    """(binary file, size) for a regular, readable file, opened without blocking; a
    one-line ModelFileError for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file: check the path, or `localllm list` for pulled models") from None
    except PermissionError:
        raise ModelFileError(f"{path}: cannot read it (permission denied): check the file's permissions") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot open it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ModelFileError(f"{path}: is a folder, not a GGUF model file")
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: is not a regular file (a pipe, device or socket): give a .gguf model file")
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str | os.PathLike, keep_arrays: bool = False,
                keep_token_texts: bool = True) -> tuple[dict, list[tuple]]:
    """Return (metadata, tensors) where tensors are (name, shape, ggml_type, offset).
    `keep_token_texts`: keep the vocabulary's texts for the checks (a weights loader
    does without: tens of thousands of strings)."""
    path = Path(path)
    f, size = open_model_file(path)
    try:
        with f:
            return _read_header(f, path, size, keep_arrays, keep_token_texts)
    except OSError as e:  # an I/O error while reading (a bad disk, a file that shrank)
        raise ModelFileError(f"{path}: cannot read it ({e.strerror or e})") from None


def _read_header(f, path: Path, size: int, keep_arrays: bool, keep_token_texts: bool) -> tuple[dict, list[tuple]]:
    r = _Reader(f, path, size)
    magic = f.read(4)
    if magic != GGUF_MAGIC:
        shown = repr(magic) if magic.isascii() and magic.isalnum() else "other bytes"
        raise ModelFileError(
            f"{path}: not a GGUF model file (it starts with {shown}): give a .gguf file, "
            "or convert the model with llama.cpp's convert_hf_to_gguf.py"
        )
    version = r.scalar("<I")
    if version not in (2, 3):
        raise ModelFileError(f"{path}: GGUF version {version} is not supported (2 and 3 are): re-convert the model")
    n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise _corrupted(path, f"{n_tensors} tensors and {n_kv} metadata entries")
    meta: dict = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("<I"), keep_arrays, keep_texts=keep_token_texts and key == "tokenizer.ggml.tokens")
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise ModelFileError(f"{path}: corrupted GGUF tensor table: download it again")
        shape = tuple(r.scalar("<Q") for _ in range(n_dims))
        tensors.append((name, shape, r.scalar("<I"), r.scalar("<Q")))
    align = meta.get("general.alignment", 32)
    if type(align) is not int or align <= 0 or align & (align - 1) or align > 1 << 24:
        raise _corrupted(path, f"general.alignment is {align!r}, not a power of two")
    meta["_data_start"] = -(-f.tell() // align) * align
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
    return describe_gguf(path, *read_header(path))


def describe_gguf(path: str | os.PathLike, meta: dict, tensors: list[tuple]) -> ModelInfo:
    """`inspect_gguf` on a header already read (`read_header`), for callers that also
    need its tensor table."""
    from localllm.formats.gguf_checks import check_header_values

    weights = check_complete(path, meta, tensors)
    arch = meta.get("general.architecture", "")
    if not arch or not isinstance(arch, str):
        raise ModelFileError(f"{path}: GGUF header has no general.architecture: the file is not a model")
    check_header_values(path, meta, arch)
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
        vocab_size=len(vocab) if isinstance(vocab, list) else int(vocab or 0),
        n_params=n_params,
        file_type=FILE_TYPES.get(meta.get("general.file_type", -1), "unknown") if type(meta.get("general.file_type", -1)) is int else "unknown",
        chat_template=template if isinstance(template, str) else None,
        metadata={k: v for k, v in meta.items() if not isinstance(v, list)} | {"_weights_bytes": weights},
    )
