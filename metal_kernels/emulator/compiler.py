"""Compiles an emulated kernel's C++ translation unit to a shared library, cached by hash.

The library lands in the user cache folder under the sha256 of everything that shapes it
(the translation unit, the emulator's headers, the compiler and its flags), so a test
run compiles each kernel variant once per machine. Undefined-behaviour checks that catch
real kernel bugs are on where the compiler supports them: misaligned loads (Metal needs
natural alignment: a `half4` at 8 bytes), array indices out of bounds (threadgroup and
thread arrays), oversized shifts and division by zero.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import CompilerMissing, MetalCompileError

HEADER_DIR = Path(__file__).resolve().parent

BASE_FLAGS = (
    "-std=c++20", "-O1", "-fPIC", "-shared", "-fsigned-char", "-fno-threadsafe-statics",
    "-fvisibility=hidden", "-fno-strict-aliasing", "-Wno-attributes", "-Wno-unknown-attributes",
)
SANITIZER_FLAGS = (
    "-fsanitize=alignment,bounds,shift-exponent,integer-divide-by-zero",
    "-fno-sanitize-recover=all",
)


@functools.cache
def compiler() -> str:
    for candidate in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise CompilerMissing("the Metal emulator needs a C++20 compiler (g++ 12+ or clang++ 15+); set CXX")


@functools.cache
def compiler_identity() -> str:
    out = subprocess.run([compiler(), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else compiler()


def cache_dir() -> Path:
    import platformdirs

    path = Path(platformdirs.user_cache_dir("localllm", appauthor=False)) / "metal-emulator"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def flags(ucontext_fibers: bool = False) -> tuple[str, ...]:
    """The compile flags, with the sanitizers where a probe shows they link."""
    chosen = list(BASE_FLAGS)
    if ucontext_fibers:
        chosen.append("-DMTL_FIBERS_UCONTEXT")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cpp"
        probe.write_text('extern "C" int probe(int* a, int i) { int b[4] = {1, 2, 3, 4}; return a[i] + b[i & 3]; }\n')
        result = subprocess.run([compiler(), *BASE_FLAGS, *SANITIZER_FLAGS, str(probe), "-o", str(Path(tmp) / "probe.so")],
                                capture_output=True, text=True, check=False)
        if result.returncode == 0:
            chosen += SANITIZER_FLAGS
    return tuple(chosen)


def library_key(unit: str, ucontext_fibers: bool) -> str:
    digest = hashlib.sha256()
    for part in (compiler_identity(), " ".join(flags(ucontext_fibers)), unit):
        digest.update(part.encode())
        digest.update(b"\0")
    for header in sorted(HEADER_DIR.glob("*.h")):
        digest.update(header.name.encode())
        digest.update(header.read_bytes())
    return digest.hexdigest()[:32]


_loaded: dict[str, ctypes.CDLL] = {}


def load_library(unit: str, *, label: str, ucontext_fibers: bool = False) -> ctypes.CDLL:
    """The compiled library for `unit` (compiling it on a cache miss)."""
    key = library_key(unit, ucontext_fibers)
    if key in _loaded:
        return _loaded[key]
    folder = cache_dir()
    lib_path = folder / f"{key}.so"
    if not lib_path.exists():
        src = folder / f"{key}.{os.getpid()}.cpp"
        tmp = folder / f"{key}.{os.getpid()}.so.partial"
        src.write_text(unit)
        try:
            result = subprocess.run([compiler(), *flags(ucontext_fibers), "-I", str(HEADER_DIR), str(src), "-o", str(tmp)],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0:
                message = result.stderr.replace(str(src), f"{label}.cpp")
                raise MetalCompileError(f"Metal kernel '{label}' does not compile in the emulator:\n{message[-8000:]}")
            os.replace(tmp, lib_path)
        finally:
            src.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    lib = ctypes.CDLL(str(lib_path))
    lib.mtl_launch.restype = ctypes.c_int
    lib.mtl_launch.argtypes = [
        ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int64), ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_double,
        ctypes.c_char_p, ctypes.c_int,
    ]
    _loaded[key] = lib
    return lib
