"""`mx.fast.metal_kernel`'s interface, run by the CPU emulator.

`MetalEmulator().metal_kernel(...)` takes exactly what `mx.fast.metal_kernel` takes and
returns a callable with the same keywords (inputs, output_shapes, output_dtypes, grid,
threadgroup, template, init_value, verbose), so an op's wrapper code runs unchanged
against either. Inputs are numpy or MLX arrays (or Python scalars, which MLX turns into
0-d int32/float32/bool arrays); outputs come back as MLX arrays when MLX is in play
(any input or output dtype from MLX), else as numpy arrays (bfloat16 as its uint16 bits).

Inputs are copied to row-contiguous buffers that start 16-byte aligned (Metal buffers are
aligned; the emulator checks the alignment of every typed load against Metal's rules) and
end next to an inaccessible page. Inputs are always passed row-contiguous: with
`ensure_row_contiguous=False` the kernel still gets correct `_strides`, those of the
contiguous copy.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from .compiler import load_library
from .errors import MetalRuntimeError
from .kernel_source import METAL_TYPE_NAMES, InputSpec, translation_unit

SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2}
SLOT_INPUT, SLOT_OUTPUT = 1, 2  # metal_emulator.h SlotKind
ERROR_CAPACITY = 16384

_NUMPY_STORAGE = {
    "float32": np.float32, "float16": np.float16, "bfloat16": np.uint16, "bool": np.bool_,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
}


def dtype_name(dtype) -> str:
    """'float32', 'bfloat16', ... for an MLX dtype, a numpy dtype or such a name."""
    text = str(dtype)
    if text.startswith("mlx.core."):
        text = text[len("mlx.core."):]
    elif not isinstance(dtype, str) or text not in METAL_TYPE_NAMES:
        text = np.dtype(dtype).name
    if text not in METAL_TYPE_NAMES:
        raise TypeError(f"the Metal emulator has no type for {dtype}")
    return text


def _is_mlx(obj) -> bool:
    return type(obj).__module__.startswith("mlx")


def _to_numpy(value) -> tuple[np.ndarray, str]:
    """(storage array, dtype name)."""
    if isinstance(value, bool):
        return np.array(value, dtype=np.bool_), "bool"
    if isinstance(value, int):
        return np.array(value, dtype=np.int32), "int32"
    if isinstance(value, float):
        return np.array(value, dtype=np.float32), "float32"
    if _is_mlx(value):
        import mlx.core as mx

        name = dtype_name(value.dtype)
        if name == "bfloat16":
            return np.array(value.view(mx.uint16)), name
        return np.array(value), name
    array = np.asarray(value)
    return array, dtype_name(array.dtype)


def _aligned(shape, storage, keep: list) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    nbytes = count * np.dtype(storage).itemsize
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    offset = (-raw.ctypes.data) % 64
    keep.append(raw)
    return raw[offset:offset + nbytes].view(storage).reshape(shape)


def _init_bytes(value: float, name: str, out: np.ndarray) -> None:
    if name == "bfloat16":
        bits = np.array(value, dtype=np.float32).view(np.uint32) >> 16
        out[...] = bits.astype(np.uint16)
    else:
        out[...] = value


@dataclass
class MetalEmulator:
    """A factory with `mx.fast.metal_kernel`'s signature whose kernels run on the CPU.

    schedule: the order fibers run in between synchronization points ("forward",
    "reverse", or "shuffle" with `seed`): running a kernel under two orders exposes a
    missing barrier. isolate: run each launch in a forked child (a crash becomes an
    error). fibers: "native" (a register switch on x86-64) or "ucontext".
    """

    schedule: str = "forward"
    seed: int = 0
    isolate: bool = True
    timeout_s: float = 300.0
    fibers: str = "native"

    def metal_kernel(self, name: str, input_names, output_names, source: str, header: str = "",
                     ensure_row_contiguous: bool = True, atomic_outputs: bool = False, compile_options=None):
        if not output_names:
            raise ValueError("[metal_kernel] Must specify at least one output.")
        return EmulatedKernel(self, name, list(input_names), list(output_names), source, header, atomic_outputs)


class EmulatedKernel:
    def __init__(self, emulator: MetalEmulator, name, input_names, output_names, source, header, atomic_outputs):
        self.emulator = emulator
        self.name = name
        self.input_names = input_names
        self.output_names = output_names
        self.source = source
        self.header = header
        self.atomic_outputs = atomic_outputs

    def __call__(self, *, inputs, output_shapes, output_dtypes, grid, threadgroup, template=None,
                 init_value=None, verbose=False, stream=None):
        if len(inputs) != len(self.input_names):
            raise ValueError(f"[metal_kernel] Expected `inputs` to have size {len(self.input_names)} but got size {len(inputs)}.")
        if len(output_shapes) != len(self.output_names) or len(output_dtypes) != len(self.output_names):
            raise ValueError(f"[metal_kernel] Expected {len(self.output_names)} output shapes and dtypes.")
        grid = tuple(int(g) for g in grid)
        threadgroup = tuple(int(t) for t in threadgroup)
        if len(grid) != 3 or len(threadgroup) != 3 or min(threadgroup) < 1 or min(grid) < 0:
            raise ValueError(f"grid {grid} and threadgroup {threadgroup} must be 3-tuples (threadgroup sizes >= 1)")

        keep: list = []
        specs, buffers = [], []
        for input_name, value in zip(self.input_names, inputs):
            array, name = _to_numpy(value)
            buf = _aligned(array.shape, _NUMPY_STORAGE[name], keep)
            buf[...] = array
            specs.append(InputSpec(input_name, name, array.ndim, int(array.size)))
            buffers.append(buf)
        out_names = [dtype_name(d) for d in output_dtypes]
        template = [(k, v if isinstance(v, (bool, int)) else dtype_name(v)) for k, v in (template or [])]

        unit, roles, full_name = translation_unit(
            name=self.name, header=self.header, source=self.source, inputs=specs, output_names=self.output_names,
            output_dtypes=out_names, template=template, atomic_outputs=self.atomic_outputs)
        if verbose:
            print(f"Generated source code for `{self.name}` (emulator):\n```\n{unit}```")
        lib = load_library(unit, label=self.name, ucontext_fibers=self.emulator.fibers == "ucontext")

        outputs = []
        for shape, name in zip(output_shapes, out_names):
            out = _aligned(tuple(int(s) for s in shape), _NUMPY_STORAGE[name], keep)
            if init_value is None:
                out.view(np.uint8)[...] = 0xFF  # NaN for floats: unwritten outputs show
            else:
                _init_bytes(float(init_value), name, out)
            outputs.append(out)

        n_args = len(roles)
        args = (ctypes.c_void_p * n_args)()
        kinds = (ctypes.c_int * max(1, n_args))()
        sizes = (ctypes.c_int64 * max(1, n_args))()
        in_index, out_index = 0, 0
        for slot, role in enumerate(roles):
            if role == "in":
                buf = buffers[in_index]
                in_index += 1
                args[slot], kinds[slot], sizes[slot] = buf.ctypes.data, SLOT_INPUT, buf.nbytes
            elif role in ("shape", "strides", "ndim"):
                buf = buffers[in_index - 1]
                if role == "shape":
                    meta = np.array(buf.shape, dtype=np.int32)
                elif role == "strides":
                    meta = np.array([s // buf.itemsize for s in buf.strides], dtype=np.int64)
                else:
                    meta = np.array([buf.ndim], dtype=np.int32)
                keep.append(meta)
                args[slot] = meta.ctypes.data
            elif role == "out":
                out = outputs[out_index]
                out_index += 1
                args[slot], kinds[slot], sizes[slot] = out.ctypes.data, SLOT_OUTPUT, out.nbytes
        dims = (ctypes.c_int64 * 6)(*grid, *threadgroup)
        err = ctypes.create_string_buffer(ERROR_CAPACITY)
        emu = self.emulator
        rc = lib.mtl_launch(args, kinds, sizes, n_args, dims, SCHEDULES[emu.schedule], emu.seed,
                            int(emu.isolate), emu.timeout_s, err, ERROR_CAPACITY)
        if rc != 0:
            raise MetalRuntimeError(f"Metal kernel '{self.name}' ({full_name}) failed in the emulator: "
                                    f"{err.value.decode(errors='replace')}")
        if any(_is_mlx(v) for v in inputs) or any(_is_mlx(d) for d in output_dtypes):
            return [_to_mlx(out, name) for out, name in zip(outputs, out_names)]
        return [out.copy() for out in outputs]


def _to_mlx(array: np.ndarray, name: str):
    import mlx.core as mx

    if name == "bfloat16":
        return mx.array(array).view(mx.bfloat16)
    return mx.array(array)
