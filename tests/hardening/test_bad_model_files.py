"""Crafted and mutated GGUF files, a FIFO and a folder through the real CLI: `run`,
`import`, `chat` and `serve --model` each answer one line and exit 2, never a llama.cpp
abort (exit 134), a Python traceback (exit 1) or a hang."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.hardening import crafted_gguf as g

CRAFTED = {
    "block_count 0": {"llama.block_count": g.u32(0)},
    "block_count 100000": {"llama.block_count": g.u32(100_000)},
    "context_length 1": {"llama.context_length": g.u32(1)},
    "context_length NaN": {"llama.context_length": g.f32(float("nan"))},
    "context_length inf": {"llama.context_length": g.f32(float("inf"))},
    "context_length string": {"llama.context_length": g.string("4096")},
    "context_length array": {"llama.context_length": g.array(g.U32, [struct.pack("<I", 4096)] * 100)},
    "embedding_length NaN": {"llama.embedding_length": g.f32(float("nan"))},
    "expert_count 100000": {"llama.expert_count": g.u32(100_000)},
    "alignment 0": {"general.alignment": g.u32(0)},
    "alignment NaN": {"general.alignment": g.f32(float("nan"))},
    "alignment 3": {"general.alignment": g.u32(3)},
    "file_type array": {"general.file_type": g.array(g.U32, [struct.pack("<I", 1)])},
    "arrays nested 5000 deep": {"general.nested": g.nested_array(5000)},
    "empty vocabulary": {"tokenizer.ggml.tokens": g.strings([]), "tokenizer.ggml.scores": g.array(g.F32, []),
                         "tokenizer.ggml.token_type": g.array(g.I32, [])},
    "no architecture": {"general.architecture": None},
    "architecture array": {"general.architecture": g.strings(["llama"])},
    "huge string length": {"general.name": g.Value(g.STRING, struct.pack("<Q", 1 << 40))},
    "huge array length": {"general.tags": g.Value(g.ARRAY, struct.pack("<IQ", g.U32, 1 << 50))},
    "scores shorter than tokens": {"tokenizer.ggml.scores": g.array(g.F32, [struct.pack("<f", 0.0)] * 3)},
}


@pytest.fixture(scope="module")
def crafted(stories_path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crafted")
    files = {name: g.craft(stories_path, folder / f"{i}.gguf", overrides) for i, (name, overrides) in enumerate(CRAFTED.items())}
    tokens = g.string_array_of(stories_path, "tokenizer.ggml.tokens")
    tokens[300] = tokens[301]
    files["duplicate token"] = g.craft(stories_path, folder / "dup.gguf", {"tokenizer.ggml.tokens": g.strings(tokens)})
    return files


def assert_refused(r: subprocess.CompletedProcess, what: str) -> None:
    assert r.returncode == 2, f"{what}: exit {r.returncode}: {r.stderr[-600:]}"
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("localllm: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, f"{what}: {r.stderr[-600:]}"


def test_crafted_files_are_refused_by_run_and_import(crafted, isolated_home):
    for name, path in crafted.items():
        assert_refused(run_cli("run", str(path), "Once", "--max-tokens", "1", "--threads", "1", timeout=60), f"run: {name}")
        assert_refused(run_cli("import", str(path), "--name", "bad:1", timeout=60), f"import: {name}")
    assert not (isolated_home / "models" / "manifests").exists()


def test_crafted_files_are_refused_by_serve_and_chat(crafted, isolated_home):
    for name in ("block_count 0", "duplicate token", "arrays nested 5000 deep"):
        path = str(crafted[name])
        assert_refused(run_cli("serve", "--port", "0", "--model", path, timeout=60), f"serve: {name}")
        assert_refused(run_cli("chat", path, timeout=60), f"chat: {name}")


def test_the_original_still_loads(stories_path, tmp_path, isolated_home):
    copy = g.craft(stories_path, tmp_path / "copy.gguf", {})
    r = run_cli("run", str(copy), "Once", "--max-tokens", "2", "--threads", "1", "--temperature", "0", timeout=60)
    assert r.returncode == 0, r.stderr
    assert run_cli("import", str(copy), "--name", "copy:1", timeout=60).returncode == 0


def test_fifo_folder_and_device_are_refused_without_hanging(tmp_path, isolated_home):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    keep_open = threading.Thread(target=lambda: None)  # nothing ever writes to the FIFO
    keep_open.start()
    for target in (str(fifo), str(tmp_path), "/dev/zero"):
        for args in (["run", target, "x", "--threads", "1"], ["import", target, "--name", "f:1"],
                     ["serve", "--port", "0", "--model", target], ["chat", target]):
            r = run_cli(*args, timeout=60)  # a hang fails here, by the timeout
            assert_refused(r, " ".join(args))
            assert any(word in r.stderr for word in ("folder", "regular file", "pipe")), r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_refused(stories_path, tmp_path, isolated_home):
    locked = g.craft(stories_path, tmp_path / "locked.gguf", {})
    locked.chmod(0)
    r = run_cli("run", str(locked), "x", timeout=60)
    assert_refused(r, "unreadable")
    assert "permission" in r.stderr


# -- fuzz: seeded mutations of the header ------------------------------------------------

def random_value(rng: random.Random) -> g.Value:
    choice = rng.randrange(8)
    if choice == 0:
        return g.u32(rng.choice([0, 1, 2, 3, 7, 15, 16, 255, 511, 512, 513, 65535, 2**31, 2**32 - 1]))
    if choice == 1:
        return g.u64(rng.choice([0, 1, 2**63, 2**64 - 1]))
    if choice == 2:
        return g.i32(rng.choice([-1, -(2**31), 0, 1]))
    if choice == 3:
        return g.f32(rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e30]))
    if choice == 4:
        return g.string(rng.choice(["", "llama", "x" * 300, "\x00", "nan"]))
    if choice == 5:
        return g.array(g.U32, [struct.pack("<I", rng.randrange(1 << 32)) for _ in range(rng.randrange(4))])
    if choice == 6:
        return g.Value(rng.choice([g.BOOL, g.U8, g.I8]), bytes([rng.randrange(256)]))
    return g.nested_array(rng.randrange(1, 4))


@pytest.mark.slow
def test_fuzz_mutated_headers_exit_2_or_run(stories_path, tmp_path, isolated_home):
    from gguf import GGUFReader

    rng = random.Random(1604)
    keys = [k for k in GGUFReader(str(stories_path)).fields if not k.startswith("GGUF.")]
    keys += ["llama.expert_count", "llama.expert_used_count", "general.alignment", "llama.attention.key_length"]
    end = g.header_end(stories_path)
    outcomes: dict[int, int] = {}
    for i in range(24):
        path = tmp_path / f"m{i}.gguf"
        if i % 2:
            overrides = {rng.choice(keys): random_value(rng) for _ in range(rng.randrange(1, 4))}
            g.craft(stories_path, path, overrides)
        else:
            data = bytearray(stories_path.read_bytes())
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(4, end)] = rng.randrange(256)
            path.write_bytes(bytes(data))
        r = run_cli("run", str(path), "Once", "--max-tokens", "1", "--threads", "1", "--ctx-size", "64", timeout=120)
        outcomes[r.returncode] = outcomes.get(r.returncode, 0) + 1
        # 0: the mutation did not matter (a name, a score); 2: refused in one line.
        assert r.returncode in (0, 2), f"mutation {i}: exit {r.returncode}: {r.stderr[-800:]}"
        assert "Traceback" not in r.stderr
    assert outcomes.get(2, 0) >= 8, outcomes


def test_vocabulary_only_file_with_a_duplicate_token_is_refused(tmp_path):
    """The tokenizer loads vocabulary-only GGUFs through llama.cpp too: checked first."""
    from tests.conftest import require_model

    src = require_model("llama-vocab-spm/ggml-vocab-llama-spm.gguf")
    tokens = g.string_array_of(src, "tokenizer.ggml.tokens")
    tokens[500] = tokens[501]
    bad = g.craft(src, tmp_path / "vocab.gguf", {"tokenizer.ggml.tokens": g.strings(tokens)})
    code = ("from localllm.cpu_backend.vocab import LlamaCppVocabulary\n"
            "from localllm.errors import ModelFileError\n"
            f"try:\n    LlamaCppVocabulary.from_file({str(bad)!r})\n"
            "except ModelFileError as e:\n    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("refused:") and "twice" in r.stdout, r.stderr[-500:]
