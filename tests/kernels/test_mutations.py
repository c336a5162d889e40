"""Flipping one arithmetic operator (+ and -, * and /, also in += -= *= /=) anywhere in a
`.metal` source must make a kernel check fail: the tests look at what the kernels
compute, not only that they run. Each mutant is compiled and run by the emulator on a
small case that reaches every code path (tail rows, partial threadgroups, several
blocks and rows of x; two sequences, GQA 2, two queries, several keys per SIMD group);
a wrong result, a crash, a sanitizer report or a timeout counts as caught.

Operators are found as a binary operator between spaces (the sources' style), outside
comments. The regular run flips an evenly spread sample per file, the slow run a larger
one; every flip (151 at the time of writing, about 4 minutes of compiling) runs with
LOCALLLM_MUTATION_SWEEP=1.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import pytest

from tests.kernels.kernel_checks import (
    affine8_float64, assert_within, emulator_factory, exact_attention, gguf_weights, matmul_error_bound, random_blocks, to_numpy,
)

OPERATOR = re.compile(r"(?<=\s)([-+*/])(=?)(?=\s)")
FLIP = {"+": "-", "-": "+", "*": "/", "/": "*"}
SOURCES = ("quant_matmul.metal", "sdpa_decode.metal")
SAMPLE_PER_FILE = 4
SLOW_SAMPLE_PER_FILE = 16
MUTANT_TIMEOUT_S = 8  # the checks take well under a second; a mutant that loops is caught


@dataclass(frozen=True)
class Mutant:
    filename: str
    line: int
    section: str  # "header" or a kernel's name
    before: str
    after: str
    text: str  # the whole mutated file

    def __str__(self):
        return f"{self.filename}:{self.line} ({self.section}): {self.before!r} -> {self.after!r}"


def mutants(filename: str) -> list[Mutant]:
    from localllm.metal_kernels import metal_source
    from localllm.metal_kernels.emulator.kernel_source import code_only

    text = metal_source.read(filename)
    code = code_only(text)
    sections = [(m.start(), m.group(1).removeprefix("kernel ")) for m in re.finditer(r"^// === (header|kernel \w+) ===", text, re.M)]
    found = []
    for match in OPERATOR.finditer(code):
        owners = [name for start, name in sections if start < match.start()]
        if not owners:
            continue  # the file's description
        flipped = FLIP[match.group(1)] + match.group(2)
        found.append(Mutant(filename, text.count("\n", 0, match.start()) + 1, owners[-1], match.group(0), flipped,
                            text[:match.start()] + flipped + text[match.end():]))
    return found


def check_quant_matmul(source, quant: str) -> None:
    import mlx.core as mx

    from localllm.metal_kernels.emulator import MetalEmulator
    from localllm.metal_kernels.quant_matmul import QuantMatmulKernels

    k = {"q8_0": 640, "q4_k": 768, "q6_k": 768}[quant]  # more units than lanes
    rng = np.random.default_rng(11)
    w = random_blocks(rng, quant, 5, k)  # 3 SIMD groups: a tail row, a partial threadgroup
    x = rng.standard_normal((2, k)).astype(np.float32)
    kernels = QuantMatmulKernels(MetalEmulator(timeout_s=MUTANT_TIMEOUT_S).metal_kernel, source=source)
    y = kernels(mx.array(x), mx.array(w), quant)
    exact = x.astype(np.float64) @ gguf_weights(w, quant).T
    assert_within(to_numpy(y), exact, matmul_error_bound(x.astype(np.float64), w, quant, "float32"), "float32", quant)


def check_sdpa_decode(source, kv: str) -> None:
    import mlx.core as mx

    from localllm.metal_kernels.emulator import MetalEmulator
    from localllm.metal_kernels.sdpa_decode import DecodeAttentionKernels

    rng = np.random.default_rng(12)
    q, k, v = (mx.array(rng.standard_normal(shape).astype(np.float32))
               for shape in ((2, 4, 2, 64), (2, 2, 24, 64), (2, 2, 24, 64)))
    kernels = DecodeAttentionKernels(MetalEmulator(timeout_s=MUTANT_TIMEOUT_S).metal_kernel, source=source, simdgroups=4)
    if kv == "affine8":
        keys, values = mx.quantize(k, group_size=32, bits=8), mx.quantize(v, group_size=32, bits=8)
        out = kernels(q, keys, values, 21, 0.125)
        (k64, k_mag), (v64, v_mag) = affine8_float64(keys), affine8_float64(values)
        exact, bound = exact_attention(np.array(q), k64, v64, 21, 0.125, k_mag, v_mag)
    else:
        out = kernels(q, k, v, 21, 0.125)
        exact, bound = exact_attention(np.array(q), np.array(k), np.array(v), 21, 0.125)
    assert_within(to_numpy(out), exact, bound, "float32", kv)


CHECKS = {
    "quant_matmul.metal": (check_quant_matmul, ("q8_0", "q4_k", "q6_k")),
    "sdpa_decode.metal": (check_sdpa_decode, ("float", "affine8")),
}


def caught(mutant: Mutant) -> str | None:
    """How a check noticed the mutant, or None if every check passed."""
    from localllm.metal_kernels import metal_source
    from localllm.metal_kernels.emulator import MetalCompileError, MetalRuntimeError

    check, kernels = CHECKS[mutant.filename]
    source = metal_source.parse(mutant.text)
    for kernel in kernels if mutant.section == "header" else (mutant.section,):
        try:
            check(source, kernel)
        except (AssertionError, MetalCompileError, MetalRuntimeError) as exc:
            return f"{kernel}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return None


def sample(found: list[Mutant], n: int) -> list[Mutant]:
    picks = np.linspace(0, len(found) - 1, n).round().astype(int)
    return [found[i] for i in sorted(set(picks))]


@pytest.fixture(scope="module", autouse=True)
def _needs_compiler():
    emulator_factory()


@pytest.mark.parametrize("filename", SOURCES)
def test_the_unmutated_sources_pass_the_checks(filename):
    from localllm.metal_kernels import metal_source

    check, kernels = CHECKS[filename]
    for kernel in kernels:
        check(metal_source.load(filename), kernel)


@pytest.mark.parametrize("filename", SOURCES)
def test_every_source_has_operators_to_flip(filename):
    found = mutants(filename)
    assert len(found) > 40
    assert {m.section for m in found} >= {"header"}


@pytest.mark.parametrize("filename", SOURCES)
def test_a_sample_of_operator_flips_is_caught(filename):
    survivors = [str(m) for m in sample(mutants(filename), SAMPLE_PER_FILE) if caught(m) is None]
    assert not survivors, f"operator flips no check noticed: {survivors}"


@pytest.mark.slow
@pytest.mark.parametrize("filename", SOURCES)
def test_a_larger_sample_of_operator_flips_is_caught(filename):
    survivors = [str(m) for m in sample(mutants(filename), SLOW_SAMPLE_PER_FILE) if caught(m) is None]
    assert not survivors, f"operator flips no check noticed: {survivors}"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LOCALLLM_MUTATION_SWEEP") != "1",
                    reason="flips every operator (minutes of compiling); set LOCALLLM_MUTATION_SWEEP=1")
@pytest.mark.parametrize("filename", SOURCES)
def test_every_operator_flip_is_caught(filename):
    survivors = [str(m) for m in mutants(filename) if caught(m) is None]
    assert not survivors, f"operator flips no check noticed: {survivors}"
