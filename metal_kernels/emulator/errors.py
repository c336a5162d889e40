"""The emulator's errors: a kernel that does not compile, one that fails while running,
and a machine without a C++ compiler."""


class MetalCompileError(RuntimeError):
    """The kernel's Metal source does not compile against the emulator's Metal subset
    (or breaks a Metal rule the emulator checks before compiling)."""


class MetalRuntimeError(RuntimeError):
    """A kernel failed while running in the emulator (crash, sanitizer report, divergent
    SIMD-group functions, mismatched barriers, timeout)."""


class CompilerMissing(RuntimeError):
    """No C++ compiler on this machine."""
