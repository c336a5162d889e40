"""The full Metal source of a custom kernel, built the way MLX builds it.

`mx.fast.metal_kernel` takes a body and a header; at call time MLX writes a signature
from the input and output names, their dtypes, the template arguments and the kernel
attributes the body mentions (mlx/backend/common/metal_kernel.cpp, `write_signature`).
This module writes the same text, so the emulator compiles what Metal would compile.
The only change the emulator makes is `threadgroup_variables`: a `threadgroup` variable
becomes a static (shared by the fibers of the running threadgroup) that registers itself
for poisoning; `#line` markers make compiler messages point into the body or header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MetalCompileError

# MLX passes inputs with fewer elements than this in the constant address space.
MAX_CONSTANT_ARRAY_SIZE = 8

# MLX's table of kernel attributes, in its order: an attribute becomes a parameter when
# its name occurs anywhere in the body (a substring test, as MLX does).
METAL_ATTRIBUTES = (
    ("dispatch_quadgroups_per_threadgroup", "uint"),
    ("dispatch_simdgroups_per_threadgroup", "uint"),
    ("dispatch_threads_per_threadgroup", "uint3"),
    ("grid_origin", "uint3"),
    ("grid_size", "uint3"),
    ("quadgroup_index_in_threadgroup", "uint"),
    ("quadgroups_per_threadgroup", "uint"),
    ("simdgroup_index_in_threadgroup", "uint"),
    ("simdgroups_per_threadgroup", "uint"),
    ("thread_execution_width", "uint"),
    ("thread_index_in_quadgroup", "uint"),
    ("thread_index_in_simdgroup", "uint"),
    ("thread_index_in_threadgroup", "uint"),
    ("thread_position_in_grid", "uint3"),
    ("thread_position_in_threadgroup", "uint3"),
    ("threadgroup_position_in_grid", "uint3"),
    ("threadgroups_per_grid", "uint3"),
    ("threads_per_grid", "uint3"),
    ("threads_per_simdgroup", "uint"),
    ("threads_per_threadgroup", "uint3"),
)

# MLX's get_type_string.
METAL_TYPE_NAMES = {
    "float32": "float",
    "float16": "float16_t",
    "bfloat16": "bfloat16_t",
    "bool": "bool",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "uint16": "uint16_t",
    "uint32": "uint32_t",
    "uint64": "uint64_t",
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # a key of METAL_TYPE_NAMES
    ndim: int
    size: int


@dataclass(frozen=True)
class ShapeInfo:
    """Which of `<name>_shape`, `_strides`, `_ndim` the body mentions."""

    shape: bool
    strides: bool
    ndim: bool


def shape_infos(source: str, input_names: list[str]) -> list[ShapeInfo]:
    return [ShapeInfo(n + "_shape" in source, n + "_strides" in source, n + "_ndim" in source) for n in input_names]


def used_attributes(source: str) -> list[tuple[str, str]]:
    return [(name, type_) for name, type_ in METAL_ATTRIBUTES if name in source]


def template_value(value) -> str:
    """A template argument as MLX prints it: bools as 1/0, dtypes by their Metal name."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return METAL_TYPE_NAMES[value]


def template_kind(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return "typename"


def kernel_name(name: str, template: list[tuple[str, object]], inputs: list[InputSpec], output_dtypes: list[str]) -> str:
    """MLX's kernel name: the template values and the input/output types are part of it."""
    full = "custom_kernel_" + name
    if template:
        full += "_" + "_".join(template_value(v) for _, v in template)
    for spec in inputs:
        full += "_" + METAL_TYPE_NAMES[spec.dtype]
        if spec.ndim == 0:
            full += "s"
        elif spec.size < MAX_CONSTANT_ARRAY_SIZE:
            full += "c"
    for dtype in output_dtypes:
        full += "_" + METAL_TYPE_NAMES[dtype]
    return full


def signature_parameters(inputs: list[InputSpec], infos: list[ShapeInfo], output_names: list[str],
                         output_dtypes: list[str], attributes: list[tuple[str, str]], atomic_outputs: bool) -> list[tuple[str, str]]:
    """(role, parameter text) in MLX's order; role is 'in', 'shape', 'strides', 'ndim',
    'out' or the attribute's name."""
    params: list[tuple[str, str]] = []
    index = 0
    for spec, info in zip(inputs, infos):
        location = "constant" if spec.size < MAX_CONSTANT_ARRAY_SIZE else "device"
        ref = "&" if spec.ndim == 0 else "*"
        params.append(("in", f"  const {location} {METAL_TYPE_NAMES[spec.dtype]}{ref} {spec.name} [[buffer({index})]]"))
        index += 1
        if spec.ndim > 0:
            if info.shape:
                params.append(("shape", f"  const constant int* {spec.name}_shape [[buffer({index})]]"))
                index += 1
            if info.strides:
                params.append(("strides", f"  const constant int64_t* {spec.name}_strides [[buffer({index})]]"))
                index += 1
            if info.ndim:
                params.append(("ndim", f"  const constant int& {spec.name}_ndim [[buffer({index})]]"))
                index += 1
    for name, dtype in zip(output_names, output_dtypes):
        type_ = METAL_TYPE_NAMES[dtype]
        if atomic_outputs:
            type_ = f"atomic<{type_}>"
        params.append(("out", f"  device {type_}* {name} [[buffer({index})]]"))
        index += 1
    for attr, type_ in attributes:
        params.append((attr, f"  {type_} {attr} [[{attr}]]"))
    return params


_TG_WORD = re.compile(r"\bthreadgroup\b")
_COMMENT_OR_STRING = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', re.DOTALL)


def code_only(text: str) -> str:
    """`text` with comments and string literals blanked out (same length, same lines)."""
    return _COMMENT_OR_STRING.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


_TG_SIMPLE_DECL = re.compile(r"\s*[\w:<>,\s]+?\s+(\w+)\s*(?:\[[^\]]*\]\s*)*;")


class ThreadgroupVariableOutsideKernel(MetalCompileError):
    """Metal allows `threadgroup` variables only in a kernel function's body."""


def threadgroup_variables(text: str, *, where: str = "body") -> str:
    """Rewrite `threadgroup T name[...];` declarations to statics that register themselves;
    `threadgroup` as the address space of a pointer or reference is left to the macro.
    In a header (helper functions, program scope) such a declaration is an error, as
    Metal's compiler says too."""
    out: list[str] = []
    pos = 0
    code = code_only(text)
    for match in _TG_WORD.finditer(code):
        start, end = match.span()
        if start < pos:
            continue
        stop = min((i for i in (code.find(c, end) for c in ";)=[{,") if i >= 0), default=len(code))
        declared = code[end:stop]
        if "*" in declared or "&" in declared:
            continue  # an address space
        if where != "body":
            line = code.count("\n", 0, start) + 1
            raise ThreadgroupVariableOutsideKernel(
                f"{where} line {line}: a threadgroup variable outside the kernel body; Metal allows them only at "
                "kernel function scope (declare it in the body and pass a threadgroup pointer)")
        out.append(text[pos:start])
        semicolon = code.find(";", end)
        simple = _TG_SIMPLE_DECL.match(code, end) if semicolon >= 0 else None
        if simple:
            out.append("static" + text[end:simple.end()] + f" MTL_TG_REGISTER({simple.group(1)});")
            pos = simple.end()
        else:
            out.append("static")
            pos = end
    out.append(text[pos:])
    return "".join(out)


def translation_unit(*, name: str, header: str, source: str, inputs: list[InputSpec], output_names: list[str],
                     output_dtypes: list[str], template: list[tuple[str, object]], atomic_outputs: bool) -> tuple[str, list[str], str]:
    """(C++ text, parameter roles, MLX's kernel name). The text is MLX's kernel source
    between the emulator's prelude and a launcher that calls the kernel per thread."""
    input_names = [spec.name for spec in inputs]
    infos = shape_infos(source, input_names)
    attributes = used_attributes(source)
    full_name = kernel_name(name, template, inputs, output_dtypes)
    params = signature_parameters(inputs, infos, output_names, output_dtypes, attributes, atomic_outputs)

    lines = ['#include "metal_emulator.h"', f'#line 1 "{name}.header"', threadgroup_variables(header, where=f"{name}.header")]
    lines.append(f'#line 1 "{name}.signature"')
    if template:
        lines.append("template <" + ", ".join(f"{template_kind(v)} {k}" for k, v in template) + ">")
    lines.append(f"[[kernel]] void {full_name}(")
    lines.append(",\n".join(text for _, text in params) + ") {")
    lines.append(f'#line 1 "{name}.body"')
    lines.append(threadgroup_variables(source))
    lines.append("}")
    targs = ""
    if template:
        targs = "<" + ", ".join(template_value(v) for _, v in template) + ">"
        lines.append(f'template [[host_name("{full_name}")]] [[kernel]] decltype({full_name}{targs}) {full_name}{targs};')
    lines += ["#undef device", "#undef constant", "#undef thread", "#undef threadgroup", f'#line 1 "{name}.launcher"']

    # The launcher: argument slot i of the launch holds parameter i's buffer pointer.
    call_args = []
    for i, (role, text) in enumerate(params):
        if role in ("in", "shape", "strides", "ndim", "out"):
            declared = text.split("[[")[0].strip()
            cpp_type = declared.rsplit(" ", 1)[0].replace("device ", "").replace("constant ", "")
            if cpp_type.endswith("&"):
                call_args.append(f"*({cpp_type[:-1]}*)a[{i}]")
            else:
                call_args.append(f"({cpp_type})a[{i}]")
        else:
            call_args.append(f"t.{role}")
    lines.append("static void mtl_body(void** a, const mtl::Attrs& t) {")
    lines.append(f"  {full_name}{targs}(" + ", ".join(call_args) + ");")
    lines.append("}")
    lines.append(
        'extern "C" __attribute__((visibility("default"))) int mtl_launch(void** args, const int* kinds, '
        "const int64_t* bytes, int n_args, const int64_t* dims, int schedule, uint64_t seed, int isolate, "
        "double timeout_s, char* err, int err_cap) {\n"
        "  return mtl::launch(&mtl_body, args, kinds, bytes, n_args, dims, schedule, seed, isolate, "
        "timeout_s, err, err_cap);\n}")
    return "\n".join(lines) + "\n", [role for role, _ in params], full_name
