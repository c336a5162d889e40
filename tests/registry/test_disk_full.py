"""A disk that fills up during a pull, on a real small tmpfs: at the download and at the
manifest, the pull says "disk full" in one line (exit 2), keeps what it wrote, and the
next pull after space is freed resumes instead of starting over. Needs root to mount a
tmpfs (the test machine has it); skipped elsewhere."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import cli

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) mounts a tmpfs of `size` bytes at tmp_path/disk; grow(size) enlarges it."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = []

    def mount(size: int):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        mounted.append(mountpoint)
        return mountpoint

    def grow(size: int):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mountpoint)], check=True)

    yield mount, grow
    for m in mounted:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def pull_env(env, disk) -> dict:
    # The free-space probe is told there is room, so the pull starts and meets the real full disk.
    return env | {"LOCALLLM_HOME": str(disk / "home"), "LOCALLLM_TEST_FREE_DISK_BYTES": str(1 << 40)}


def test_disk_full_during_the_download_keeps_the_partial_and_resumes(small_disk, hub, env, catalog_repo, stories_bytes):
    mount, grow = small_disk
    disk = mount(len(stories_bytes) // 2 // PAGE * PAGE)
    r = cli("pull", "llama3.2:1b", env=pull_env(env, disk))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("localllm: error:")]
    assert len(errors) == 1 and "disk full" in errors[0] and "Traceback" not in r.stderr, r.stderr
    partials = list((disk / "home" / "models" / "partials").glob("*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size > 0
    kept = partials[0].stat().st_size
    grow(4 * len(stories_bytes))
    served_before = hub.bytes_served()
    r = cli("pull", "llama3.2:1b", env=pull_env(env, disk))
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served() - served_before <= len(stories_bytes) - kept + PAGE  # resumed, not restarted


def test_disk_full_at_the_manifest_keeps_the_blob_and_the_next_pull_finishes(small_disk, hub, env, catalog_repo,
                                                                             stories_bytes):
    mount, grow = small_disk
    disk = mount(-(-len(stories_bytes) // PAGE) * PAGE)  # the blob fits; not one page more
    r = cli("pull", "llama3.2:1b", env=pull_env(env, disk))
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("localllm: error:")]
    assert len(errors) == 1 and "disk full" in errors[0] and "manifest" in errors[0], r.stderr
    assert not list((disk / "home" / "models").rglob("*.json"))  # no half manifest
    grow(4 * len(stories_bytes))
    served_before = hub.bytes_served()
    r = cli("pull", "llama3.2:1b", env=pull_env(env, disk))
    assert r.returncode == 0, r.stderr
    assert hub.bytes_served() == served_before  # the verified blob was kept: nothing fetched again
    assert cli("list", env=pull_env(env, disk)).stdout.count("llama3.2:1b") == 1
