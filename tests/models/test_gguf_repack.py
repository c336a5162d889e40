"""GGUF tensors repacked into MLX weights dequantize to what `gguf`'s own dequantizer
gives: bit for bit for the exact types, within half a requantization step for Q2_K and
Q3_K. Tensors come from test-built models quantized by llama.cpp's quantizer and from
the real SmolLM2 (Q4_1 matrices, a Q8_0 embedding)."""

from __future__ import annotations

from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest

from localllm.models.gguf_repack import CONVERTED_BITS, GROUP, pack_bits, repack
from localllm.models.weights import AffineWeight, DenseWeight, SummedWeight
from tests.conftest import require_model

EXACT_QUANTS = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K"]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_bits_matches_mlx_layout(bits):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2**bits, size=(3, 128)).astype(np.uint8)
    ones, zeros = mx.ones((3, 128 // GROUP)), mx.zeros((3, 128 // GROUP))
    unpacked = mx.dequantize(mx.array(pack_bits(q, bits)), ones, zeros, group_size=GROUP, bits=bits)
    assert np.array_equal(np.array(unpacked), q.astype(np.float32))


def _check_file(path, names=None):
    """Repack every (or each named) tensor of `path`; return {ggml type: tensors seen}."""
    reader = gguf.GGUFReader(str(path))
    seen: dict[str, int] = {}
    for t in reader.tensors:
        if names is not None and t.name not in names:
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        weight = repack(t.data, t.tensor_type, shape, t.name)
        got = np.array(weight.dequantized() if not isinstance(weight, mx.array) else weight, dtype=np.float32)
        qtype = t.tensor_type
        if qtype in CONVERTED_BITS:
            groups = ref.reshape(shape[0], -1, GROUP)
            half_step = (groups.max(-1) - groups.min(-1)) / (2 ** CONVERTED_BITS[qtype] - 1) / 2
            err = np.abs(got - ref).reshape(groups.shape).max(-1)
            assert (err <= half_step * (1 + 1e-5) + 1e-7).all(), f"{t.name} ({qtype.name}) beyond half a step"
        else:
            assert np.array_equal(got, ref), f"{t.name} ({qtype.name}): max error {np.abs(got - ref).max()}"
        if qtype.name == "Q6_K":
            assert isinstance(weight, SummedWeight) and len(weight.parts) == 2
        elif qtype.name in ("F32", "F16", "BF16") and len(shape) == 2:
            assert isinstance(weight, DenseWeight)
        elif len(shape) == 2:
            assert isinstance(weight, AffineWeight) and weight.group_size == GROUP
        seen[qtype.name] = seen.get(qtype.name, 0) + 1
    return seen


@pytest.mark.parametrize("quant", EXACT_QUANTS)
def test_exact_repacks_equal_gguf_dequantize(build_model, quant):
    seen = _check_file(build_model("llama-gqa4", quant))
    base = quant.split("_K")[0] + "_K" if "_K" in quant else quant
    assert seen.get(base, 0) > 0, f"the {quant} model has no {base} tensor: {seen}"


@pytest.mark.parametrize("quant", ["Q3_K_M", "Q2_K"])
def test_converted_types_stay_within_half_a_step(build_model, quant):
    seen = _check_file(build_model("llama-gqa1", quant))
    assert seen.get("Q3_K", 0) + seen.get("Q2_K", 0) > 0, seen


def test_k_quant_scales_are_float32_and_legacy_scales_float16(build_model):
    reader = gguf.GGUFReader(str(build_model("llama-gqa4", "Q4_K_M")))
    kinds = {}
    for t in reader.tensors:
        if t.tensor_type.name in ("Q4_K", "Q6_K"):
            shape = tuple(int(d) for d in reversed(t.shape))
            w = repack(t.data, t.tensor_type, shape, t.name)
            part = w.parts[0] if isinstance(w, SummedWeight) else w
            kinds[t.tensor_type.name] = part.scales.dtype
    assert kinds == {"Q4_K": mx.float32, "Q6_K": mx.float32}
    reader = gguf.GGUFReader(str(build_model("llama-gqa4", "Q4_0")))
    t = next(t for t in reader.tensors if t.tensor_type.name == "Q4_0")
    w = repack(t.data, t.tensor_type, tuple(int(d) for d in reversed(t.shape)), t.name)
    assert w.scales.dtype == mx.float16 and w.biases.dtype == mx.float16


def test_smollm2_q4_1_and_q8_0_tensors_repack_exactly():
    path = require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    names = {"token_embd.weight"} | {f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm")}
    seen = _check_file(path, names)
    assert seen == {"Q8_0": 1, "Q4_1": 7, "F32": 1}


def test_embedding_rows_are_gathered_then_dequantized(build_model):
    reader = gguf.GGUFReader(str(build_model("llama-gqa4", "Q4_K_M")))
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    shape = tuple(int(d) for d in reversed(t.shape))
    w = repack(t.data, t.tensor_type, shape, t.name)
    ids = mx.array([5, 0, 511, 5])
    full = np.array(w.dequantized())
    assert np.array_equal(np.array(w.rows(ids)), full[[5, 0, 511, 5]])


def test_unsupported_type_is_a_clear_error():
    from gguf import GGMLQuantizationType as T
    from localllm.models.gguf_repack import UnsupportedTensorType

    with pytest.raises(UnsupportedTensorType, match="IQ2_XXS.*--backend llamacpp"):
        repack(np.zeros((4, 66), np.uint8), T.IQ2_XXS, (4, 256), "blk.0.attn_q.weight")


# ru_maxrss would not do: a child started by fork+exec inherits its parent's peak.
# Writing 5 to clear_refs resets this process's VmHWM to its current RSS.
RSS_PROBE = """
import re, sys
import mlx.core as mx, numpy, gguf.quants
import localllm.formats.gguf, localllm.models.gguf_loader
from localllm.models.architectures import load_gguf_model
def kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmRSS")
model, weights = load_gguf_model(sys.argv[1])
print((kib("VmHWM") - before) * 1024, weights.nbytes())
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_loading_never_holds_the_file_twice():
    """Peak RSS growth while loading SmolLM2 (98 MB) stays within 1.15x the weights MLX
    holds (plus 4 MiB of fixed allowance): the mapping's pages are dropped chunk by chunk
    as they are read and repacked arrays are filled in place. Measured: 112 MB for 98.3 MB."""
    import subprocess
    import sys

    path = require_model("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    peak_growth, weight_bytes = map(int, out.stdout.split())
    assert weight_bytes <= 1.01 * path.stat().st_size
    assert peak_growth <= 1.15 * weight_bytes + (4 << 20), (peak_growth, weight_bytes)


@pytest.mark.parametrize("quant,keep_blocks", [("Q4_K_M", False), ("Q4_K_M", True), ("Q3_K_M", False), ("F16", False)])
def test_source_rows_are_handed_back_chunk_by_chunk(build_model, monkeypatch, quant, keep_blocks):
    """Every matrix reports each of its source rows read exactly once, in several chunks
    (the loader drops those file pages right away), and small chunks change no value."""
    from localllm.models import gguf_repack

    monkeypatch.setattr(gguf_repack, "CHUNK_WEIGHTS", 2048)
    reader = gguf.GGUFReader(str(build_model("llama-gqa4", quant)))
    matrices = 0
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        if len(shape) != 2:
            continue
        chunks = []
        weight = repack(t.data, t.tensor_type, shape, t.name, keep_blocks=keep_blocks,
                        rows_done=lambda lo, hi: chunks.append((lo, hi)))
        assert chunks[0][0] == 0 and chunks[-1][1] == shape[0], (t.name, chunks[:2], chunks[-1:])
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])), t.name
        assert len(chunks) > 1, t.name
        if t.tensor_type.name not in ("Q3_K", "Q2_K"):
            ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
            assert np.array_equal(np.array(weight.dequantized(), dtype=np.float32), ref), t.name
        matrices += 1
    assert matrices >= 7
