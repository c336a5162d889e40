"""A Metal emulator for tests: compiles a custom kernel's Metal source (what
`mx.fast.metal_kernel` takes) with the system C++ compiler and runs it over a GPU
dispatch's grid with concurrent threadgroup threads, barriers and SIMD-group functions.

Use `metal_kernel` (or a `MetalEmulator` with another schedule) wherever code would call
`mx.fast.metal_kernel`. Correctness, not speed: see metal_emulator.h for the semantics.
"""

from .errors import CompilerMissing, MetalCompileError, MetalRuntimeError
from .runner import EmulatedKernel, MetalEmulator

DEFAULT = MetalEmulator()
metal_kernel = DEFAULT.metal_kernel

__all__ = ["CompilerMissing", "EmulatedKernel", "MetalCompileError", "MetalEmulator", "MetalRuntimeError", "metal_kernel"]
