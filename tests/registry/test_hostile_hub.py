"""A hub that lies in its file listing cannot make a pull write, lock or delete anything
outside the store: digests must be plain hex, file names must stay inside the model's
folder. Through the real CLI, against the fake hub on real sockets."""

from __future__ import annotations

import pytest

from .conftest import cli


@pytest.mark.parametrize("listed", [
    {"lfs": {"sha256": "x/../../../outside/keep", "size": 10}},
    {"lfs": {"sha256": "../" * 8 + "tmp/keep", "size": 10}},
    {"lfs": {"sha256": "A" * 63 + "/", "size": 10}},
    {"lfs": {"sha256": ["not", "a", "string"], "size": 10}},
    {"lfs": {"sha256": "0" * 64, "size": -5}},
    {"lfs": None, "blobId": "../../../outside/keep"},
])
def test_digest_that_is_not_hex_is_refused(hub, env, tmp_path, listed):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.partial").write_bytes(b"precious")
    hub.add_repo("evil/repo-GGUF", {"model-Q4_K_M.gguf": b"GGUF" + bytes(100)}, listed={"model-Q4_K_M.gguf": listed})
    r = cli("pull", "hf.co/evil/repo-GGUF", env=env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert (outside / "keep.partial").read_bytes() == b"precious"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.partial"]
    assert not list(tmp_path.glob("*.lock")) and not list((tmp_path / "home").rglob("*keep*"))


def test_file_name_that_leaves_the_folder_is_refused(hub, env, tmp_path):
    hub.add_repo("evil/names-GGUF", {"../../escape-Q4_K_M.gguf": b"GGUF" + bytes(100)})
    r = cli("pull", "hf.co/evil/names-GGUF", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "escape-Q4_K_M.gguf").exists()
