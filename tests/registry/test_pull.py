"""Pulls against the fake hub over real sockets: resume, verification, errors, progress,
concurrency and the disk check. The client code under test is the real one."""

from __future__ import annotations

import json
import os
import threading

import pytest

from localllm.registry import (
    DigestMismatchError, HubAccessError, HubUnavailableError, InsufficientDiskError, ModelNotFoundError,
    PullCancelled, list_models, pull_model, resolve_model_path,
)
from localllm.registry.store import ContentStore

from .conftest import CATALOG_FILE, CATALOG_REPO, FAST_RETRY, sha256


def pull(name, settings, **kw):
    kw.setdefault("retry", FAST_RETRY)
    return pull_model(name, settings, **kw)


def store_of(settings) -> ContentStore:
    return ContentStore(settings.models_dir)


def partials(settings) -> list:
    folder = store_of(settings).partials
    return sorted(folder.iterdir()) if folder.exists() else []


def blobs(settings) -> list:
    folder = store_of(settings).blobs
    return sorted(folder.iterdir()) if folder.exists() else []


def cdn_requests(hub):
    return [r for r in hub.log if r.path.startswith("/cdn/")]


def test_catalog_pull_verifies_pins_revision_and_resolves(settings, hub, catalog_repo, stories_bytes):
    events = []
    entry = pull("llama3.2:1b", settings, on_progress=events.append)
    assert (entry.name, entry.quant, entry.format) == ("llama3.2:1b", "Q4_K_M", "gguf")
    assert entry.size_bytes == len(stories_bytes) and entry.digest == sha256(stories_bytes)
    assert entry.path.read_bytes() == stories_bytes
    for name in ("llama3.2:1b", "llama3.2:1b-q4_k_m", "llama3.2:1B"):
        assert resolve_model_path(name, settings) == entry.path
    resolves = [r for r in hub.log if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{catalog_repo.revision}/{CATALOG_FILE}" == r.path.split(CATALOG_REPO)[1] for r in resolves)
    manifest = json.loads(store_of(settings).manifest_path(entry_name("llama3.2", "1b"), "gguf").read_text())
    assert manifest["source"]["revision"] == catalog_repo.revision and manifest["license"] == "llama3.2"
    statuses = [e.status for e in events]
    firsts = [statuses.index(s) for s in ("resolving", "downloading", "verifying", "writing manifest", "success")]
    assert firsts == sorted(firsts) and statuses[-1] == "success"
    assert partials(settings) == []


def entry_name(name, tag):
    from localllm.registry.names import ModelName

    return ModelName(name, tag)


def test_hub_name_picks_quant_and_lists_the_others(settings, hub):
    files = {"tiny-Q8_0.gguf": os.urandom(3000), "tiny-Q4_K_M.gguf": os.urandom(2000),
             "tiny-f16.gguf": os.urandom(4000), "mmproj-tiny-f16.gguf": os.urandom(100)}
    hub.add_repo("someone/Tiny-GGUF", files)
    entry = pull("hf.co/someone/Tiny-GGUF", settings)
    assert entry.name == "hf.co/someone/Tiny-GGUF:Q4_K_M" and entry.path.read_bytes() == files["tiny-Q4_K_M.gguf"]
    q8 = pull("huggingface.co/someone/Tiny-GGUF:q8_0", settings)
    assert q8.name == "hf.co/someone/Tiny-GGUF:Q8_0" and q8.path.read_bytes() == files["tiny-Q8_0.gguf"]
    with pytest.raises(ModelNotFoundError, match=r"no Q3_K_S file; available quants: Q4_K_M, Q8_0, F16: .*hf.co/someone/Tiny-GGUF:Q4_K_M"):
        pull("hf.co/someone/Tiny-GGUF:Q3_K_S", settings)
    assert resolve_model_path("hf.co/someone/Tiny-GGUF", settings) == entry.path
    assert pull("hf.co/someone/Tiny-GGUF:latest", settings).name == entry.name


def test_dropped_connection_resumes_with_range(settings, hub, catalog_repo, stories_bytes):
    hub.faults.drop_at, hub.faults.drops = 400_000, 1
    events = []
    entry = pull("llama3.2:1b", settings, on_progress=events.append)
    [note] = [e.detail for e in events if e.detail]
    assert note.startswith("RemoteProtocolError") and note.endswith("from 400,000 bytes")
    assert sha256(entry.path.read_bytes()) == sha256(stories_bytes)
    cdn = cdn_requests(hub)
    assert [r.range for r in cdn] == [None, "bytes=400000-"]
    assert hub.bytes_served() == len(stories_bytes)  # no byte fetched twice


def test_corrupted_byte_is_refused_and_nothing_admitted(settings, hub, catalog_repo):
    hub.faults.corrupt_at = 5000
    with pytest.raises(DigestMismatchError, match=r"is corrupted: its sha256 .* the bad download was removed and nothing was added"):
        pull("llama3.2:1b", settings)
    assert blobs(settings) == [] and partials(settings) == [] and list_models(settings) == []
    hub.faults.corrupt_at = None
    assert pull("llama3.2:1b", settings).name == "llama3.2:1b"


def test_private_repo_needs_a_token(settings, hub, monkeypatch):
    hub.add_repo("acme/Secret-GGUF", {"secret-Q4_K_M.gguf": os.urandom(1000)}, private=True)
    with pytest.raises(HubAccessError, match=r"hf.co/acme/Secret-GGUF: not found, or a private or gated repo .*set HF_TOKEN"):
        pull("hf.co/acme/Secret-GGUF", settings)
    assert hub.log[0].status == 401
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert pull("hf.co/acme/Secret-GGUF", settings).name == "hf.co/acme/Secret-GGUF:Q4_K_M"
    assert hub.log[-1].authorization == f"Bearer {hub.token}"


def test_gated_repo_and_bad_token(settings, hub, monkeypatch):
    hub.add_repo("meta/Gated-GGUF", {"gated-Q4_K_M.gguf": os.urandom(1000)}, gated=True)
    with pytest.raises(HubAccessError, match=rf"is a gated model: accept its licence at {hub.url}/meta/Gated-GGUF, then set HF_TOKEN"):
        pull("hf.co/meta/Gated-GGUF", settings)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubAccessError, match="rejected the token in HF_TOKEN"):
        pull("hf.co/meta/Gated-GGUF", settings)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert pull("hf.co/meta/Gated-GGUF", settings).size_bytes == 1000


def test_missing_repo_suggests_close_names(settings, hub, monkeypatch):
    hub.add_repo("bartowski/Qwen2.5-7B-Instruct-GGUF", {"q-Q4_K_M.gguf": b"x" * 10})
    monkeypatch.setenv("HF_TOKEN", hub.token)  # with a token the hub says 404 for a missing repo
    with pytest.raises(ModelNotFoundError, match=r"was not found on .*did you mean hf.co/bartowski/Qwen2.5-7B-Instruct-GGUF\?"):
        pull("hf.co/bartowski/Qwen2.5-7B-Instruct-GUF", settings)
    with pytest.raises(ModelNotFoundError, match=r"lama3.2:1b is not in the catalog; did you mean llama3.2"):
        pull("lama3.2:1b", settings)
    with pytest.raises(ModelNotFoundError, match=r"llama3.2 has no tag '9b': available tags are 1b, 3b"):
        pull("llama3.2:9b", settings)


def test_slow_server_progress_moves(settings, hub, catalog_repo, stories_bytes):
    hub.faults.delay_s = 0.02
    events = []
    pull("llama3.2:1b", settings, on_progress=events.append)
    done = [e.completed for e in events if e.status == "downloading"]
    assert len(set(done)) >= 5, done
    assert done == sorted(done) and done[-1] == len(stories_bytes)
    assert all(e.total == len(stories_bytes) and e.digest == sha256(stories_bytes) for e in events if e.status == "downloading")


def test_two_concurrent_pulls_fetch_once(settings, hub, catalog_repo, stories_bytes):
    hub.faults.delay_s = 0.01
    results, errors = [], []

    def worker():
        try:
            results.append(pull("llama3.2:1b", settings))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 2
    assert results[0].path == results[1].path and results[0].digest == results[1].digest == sha256(stories_bytes)
    assert hub.bytes_served() == len(stories_bytes)
    assert [b.name for b in blobs(settings)] == [f"sha256-{sha256(stories_bytes)}"]


def test_too_little_disk_is_refused_before_the_first_byte(settings, hub, catalog_repo, monkeypatch):
    monkeypatch.setenv("LOCALLLM_TEST_FREE_DISK_BYTES", "100000")
    with pytest.raises(InsufficientDiskError, match=r"needs 1.2 MiB \(1.1 MiB to write and 57.9 KiB to spare\), 97.7 KiB available"):
        pull("llama3.2:1b", settings)
    assert hub.file_requests() == [] and partials(settings) == []


def test_cancel_keeps_the_partial_and_the_next_pull_resumes(settings, hub, catalog_repo, stories_bytes, monkeypatch):
    hub.faults.delay_s = 0.005
    cancel = threading.Event()

    def stop_midway(p):
        if p.status == "downloading" and (p.completed or 0) > 300_000:
            cancel.set()

    with pytest.raises(PullCancelled, match="bytes are kept and the next pull of this model resumes"):
        pull("llama3.2:1b", settings, on_progress=stop_midway, cancel=cancel)
    [partial] = partials(settings)
    kept = partial.stat().st_size
    assert 300_000 < kept < len(stories_bytes) and list_models(settings) == []
    # the disk check counts only what is left to fetch
    monkeypatch.setenv("LOCALLLM_TEST_FREE_DISK_BYTES", str(int((len(stories_bytes) - kept) * 1.1)))
    hub.faults.delay_s = 0
    hub.log.clear()
    entry = pull("llama3.2:1b", settings)
    assert entry.path.read_bytes() == stories_bytes
    assert cdn_requests(hub)[0].range == f"bytes={kept}-"
    assert hub.bytes_served() == len(stories_bytes) - kept


def test_retries_give_up_with_a_resumable_partial(settings, hub, catalog_repo):
    hub.faults.drop_at, hub.faults.drops = 200_000, 100
    with pytest.raises(HubUnavailableError, match=r"keeps failing .*200,000 of 1,185,376 bytes are kept: run the same pull again to resume"):
        pull("llama3.2:1b", settings)
    [partial] = partials(settings)
    assert partial.stat().st_size == 200_000
    assert len(cdn_requests(hub)) == 1 + FAST_RETRY.attempts - 1


def test_stalled_connection_times_out_and_resumes(settings, hub, catalog_repo, stories_bytes):
    hub.faults.stall_at, hub.faults.stall_s, hub.faults.stalls = 300_000, 3.0, 1
    entry = pull("llama3.2:1b", settings)  # read timeout is 1 s in FAST_RETRY
    assert entry.path.read_bytes() == stories_bytes
    assert [r.range for r in cdn_requests(hub)] == [None, "bytes=300000-"]


def test_server_ignoring_range_restarts_cleanly(settings, hub, catalog_repo, stories_bytes):
    cancel = threading.Event()
    with pytest.raises(PullCancelled):
        hub.faults.delay_s = 0.005
        pull("llama3.2:1b", settings, cancel=cancel,
             on_progress=lambda p: (p.completed or 0) > 200_000 and cancel.set())
    hub.faults.delay_s, hub.faults.ignore_range = 0, True
    assert pull("llama3.2:1b", settings).path.read_bytes() == stories_bytes


def test_pulling_again_fetches_nothing_and_a_new_revision_replaces_the_blob(settings, hub, catalog_repo, stories_bytes):
    first = pull("llama3.2:1b", settings)
    hub.log.clear()
    again = pull("llama3.2:1b", settings)
    assert again.path == first.path and cdn_requests(hub) == []
    catalog_repo.files[CATALOG_FILE] = stories_bytes[:-1] + b"\x00"
    hub.add_repo(CATALOG_REPO, catalog_repo.files, license="llama3.2")  # a new commit
    updated = pull("llama3.2:1b", settings)
    assert updated.digest != first.digest and not first.path.exists()
    assert [b.name for b in blobs(settings)] == [f"sha256-{updated.digest}"]


def test_catalog_file_renamed_on_the_hub_is_found_by_its_quant(settings, hub, stories_bytes):
    hub.add_repo(CATALOG_REPO, {"llama-3.2-1b-instruct-q4_k_m.gguf": stories_bytes, "llama-3.2-1b-instruct-q8_0.gguf": b"x"})
    assert pull("llama3.2:1b", settings).path.read_bytes() == stories_bytes
    with pytest.raises(ModelNotFoundError, match=r"has no Q6_K file; available quants: Q4_K_M, Q8_0"):
        pull("llama3.2:1b-q6_k", settings)


def test_a_gguf_named_without_a_quant_pulls_as_latest(settings, hub):
    hub.add_repo("someone/Plain-GGUF", {"model.gguf": b"GGUF" + os.urandom(100)})
    entry = pull("hf.co/someone/Plain-GGUF", settings)
    assert (entry.name, entry.quant) == ("hf.co/someone/Plain-GGUF:latest", "")
    assert resolve_model_path("hf.co/someone/Plain-GGUF", settings) == entry.path
    with pytest.raises(ModelNotFoundError, match=r"no Q8_0 file; available quants: a file with no quant in its name"):
        pull("hf.co/someone/Plain-GGUF:Q8_0", settings)


def test_an_unreachable_hub_says_so(settings, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(HubUnavailableError, match=r"cannot get the file list of hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF .*ConnectError.*check your network and HF_ENDPOINT"):
        pull("llama3.2:1b", settings)
