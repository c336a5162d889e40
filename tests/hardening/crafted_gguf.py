"""Write GGUF files byte by byte: a real model's metadata and tensors with chosen values
replaced, removed or added, in any GGUF value type (including ones no writer library
would produce: NaN alignment, a string context length, arrays nested 5,000 deep).

    craft(stories, out, {"llama.block_count": u32(0)})
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

ALIGN = 32
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def _str(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


class Value:
    """An encoded GGUF value: its type id and its bytes."""

    def __init__(self, vtype: int, payload: bytes):
        self.vtype, self.payload = vtype, payload


def u32(n: int) -> Value:
    return Value(U32, struct.pack("<I", n))


def i32(n: int) -> Value:
    return Value(I32, struct.pack("<i", n))


def u64(n: int) -> Value:
    return Value(U64, struct.pack("<Q", n))


def f32(x: float) -> Value:
    return Value(F32, struct.pack("<f", x))


def string(text: str) -> Value:
    return Value(STRING, _str(text))


def array(item_type: int, items: list[bytes]) -> Value:
    return Value(ARRAY, struct.pack("<IQ", item_type, len(items)) + b"".join(items))


def strings(texts: list[str]) -> Value:
    return array(STRING, [_str(t) for t in texts])


def nested_array(depth: int) -> Value:
    """An array of an array of ... of one u32, `depth` levels deep."""
    payload = struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)
    for _ in range(depth - 1):
        payload = struct.pack("<IQ", ARRAY, 1) + payload
    return Value(ARRAY, payload)


def craft(src: Path, dst: Path, overrides: dict[str, Value | None] | None = None,
          tensor_patch=None) -> Path:
    """Copy `src` to `dst` with metadata `overrides` (None removes a key; new keys are
    added). `tensor_patch(name, raw_info_bytes) -> bytes` may rewrite a tensor's info."""
    from gguf import GGUFReader

    overrides = dict(overrides or {})
    reader = GGUFReader(str(src))
    kvs = []
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        if name in overrides:
            value = overrides.pop(name)
            if value is not None:
                kvs.append(_str(name) + struct.pack("<I", value.vtype) + value.payload)
            continue
        kvs.append(b"".join(np.asarray(p).tobytes() for p in field.parts))
    for name, value in overrides.items():
        if value is not None:
            kvs.append(_str(name) + struct.pack("<I", value.vtype) + value.payload)
    infos = []
    for t in reader.tensors:
        raw = b"".join(np.asarray(p).tobytes() for p in t.field.parts)
        infos.append(tensor_patch(t.name, raw) if tensor_patch else raw)
    data_start = min(t.data_offset for t in reader.tensors) if reader.tensors else None
    with open(src, "rb") as f:
        data = b""
        if data_start is not None:
            f.seek(data_start)
            data = f.read()
    head = b"GGUF" + struct.pack("<IQQ", 3, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % ALIGN)
    dst.write_bytes(head + data)
    return dst


def header_end(path: Path) -> int:
    """Where the tensor data starts (the end of the header, padded)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return min(t.data_offset for t in reader.tensors)


def string_array_of(path: Path, key: str) -> list[str]:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
