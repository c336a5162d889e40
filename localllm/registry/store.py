"""The content-addressed model store under `settings.models_dir`.

    blobs/sha256-<hex>                 verified files, named by their sha256
    partials/<key>.partial             downloads in progress, kept across restarts
    manifests/<name...>/<tag>/<format>.json
    snapshots/<key>/<repo paths>       symlinks giving blobs their repo names (MLX, split GGUF)
    locks/                             flock files: one per blob being fetched, and gc.lock

A blob enters `blobs/` only by `os.replace` of a verified partial, so anything there is
whole and correct. Pulls hold `gc.lock` shared; garbage collection takes it exclusively
and skips its work when a pull is running, so it never deletes a blob a pull is about
to name in a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from localllm.errors import ModelFileError
from localllm.registry.locks import FileLock
from localllm.registry.manifest import FORMATS, Manifest, fsync_dir, write_atomically
from localllm.registry.names import ModelName


# Names of files the store makes from digests: sha256 hex, or a download key
# ("sha256-<hex>", "git-<hex>", "import-<hex>"). Nothing else becomes part of a path.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"(sha256-[0-9a-f]{64}|git-[0-9a-f]{40}|git-[0-9a-f]{64}|import-[0-9a-f]{32})")


def checked_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ModelFileError(f"refusing the digest {str(sha256)[:80]!r}: a sha256 is 64 hex digits")
    return sha256


def checked_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ModelFileError(f"refusing the download key {str(key)[:80]!r}: it is not a digest")
    return key


def safe_relative_path(path: str) -> PurePosixPath:
    """A repo file path that stays inside the folder it is placed in."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        raise ModelFileError(f"refusing the file name {path!r}: it would leave the model folder")
    return p


class ContentStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.partials = self.root / "partials"
        self.manifests_dir = self.root / "manifests"
        self.snapshots = self.root / "snapshots"
        self.locks = self.root / "locks"

    # blobs and partials

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / f"sha256-{checked_sha256(sha256)}"

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def partial_path(self, key: str) -> Path:
        return self.partials / f"{checked_key(key)}.partial"

    def partial_size(self, key: str) -> int:
        try:
            return self.partial_path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def admit(self, partial: Path, sha256: str) -> Path:
        """Move a verified partial into the blobs; the caller has checked its digest."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        target = self.blob_path(sha256)
        os.replace(partial, target)
        fsync_dir(self.blobs)
        return target

    def blob_lock(self, key: str) -> FileLock:
        return FileLock(self.locks / f"{checked_key(key)}.lock")

    def pull_guard(self) -> FileLock:
        """Held (shared) by every pull and import, so gc waits for none of them."""
        return FileLock(self.locks / "gc.lock", shared=True)

    # manifests

    def manifest_path(self, name: ModelName, fmt: str) -> Path:
        assert name.tag and fmt in FORMATS
        return self.manifests_dir.joinpath(*name.segments(), name.tag, f"{fmt}.json")

    def read_manifest(self, name: ModelName, fmt: str, damaged_ok: bool = False) -> Manifest | None:
        """The manifest, None if absent; a damaged one raises, or reads as None with `damaged_ok`."""
        path = self.manifest_path(name, fmt)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(text)
        except (ValueError, KeyError, TypeError) as e:
            if damaged_ok:
                return None
            raise ModelFileError(
                f"the manifest of {name} ({path}) is damaged ({e}): run `localllm rm {name}` and pull it again"
            ) from None

    def write_manifest(self, manifest: Manifest) -> Path:
        path = self.manifest_path(manifest.model_name, manifest.format)
        write_atomically(path, manifest.to_json())
        return path

    def delete_manifest(self, name: ModelName, fmt: str) -> bool:
        path = self.manifest_path(name, fmt)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        for folder in path.parents:  # drop folders the removal left empty
            if folder == self.manifests_dir:
                break
            try:
                folder.rmdir()
            except OSError:
                break
        return True

    def all_manifests(self) -> list[tuple[Path, Manifest]]:
        """Every readable manifest; damaged ones are skipped (`show` names them)."""
        found = []
        if not self.manifests_dir.is_dir():
            return found
        for path in sorted(self.manifests_dir.rglob("*.json")):
            try:
                found.append((path, Manifest.from_json(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def manifests_named(self, name: ModelName) -> list[Manifest]:
        """All formats of name:tag, or every tag of `name` when it has no tag."""
        return [m for _, m in self.all_manifests() if m.name == name.name and (name.tag is None or m.tag == name.tag)]

    # loading paths

    def missing_blobs(self, manifest: Manifest) -> list[str]:
        return [f.path for f in manifest.files if not self.has_blob(f.sha256, f.size)]

    def model_path(self, manifest: Manifest) -> Path:
        """What a backend loads: the GGUF blob itself, or a snapshot folder of repo names
        (the MLX folder, or the first part of a split GGUF)."""
        if not manifest.needs_snapshot:
            return self.blob_path(manifest.primary.sha256)
        folder = self.snapshot(manifest)
        return folder if manifest.format == "mlx" else folder / manifest.primary.path

    def snapshot_key(self, manifest: Manifest) -> str:
        listing = json.dumps([[f.path, f.sha256] for f in manifest.files], sort_keys=True)
        return hashlib.sha256(listing.encode()).hexdigest()[:24]

    def snapshot(self, manifest: Manifest) -> Path:
        """The folder of symlinks for `manifest`, made (atomically) if missing or broken."""
        final = self.snapshots / self.snapshot_key(manifest)
        if self._snapshot_complete(final, manifest):
            return final
        tmp = self.snapshots / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for f in manifest.files:
            rel = safe_relative_path(f.path)
            link = tmp / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(self.blob_path(f.sha256), link.parent))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _snapshot_complete(self, folder: Path, manifest: Manifest) -> bool:
        return folder.is_dir() and all(
            (folder / f.path).is_symlink() and (folder / f.path).exists() for f in manifest.files
        )

    # garbage collection

    def collect_garbage(self) -> int | None:
        """Delete blobs and snapshots no manifest uses (and copies of killed imports);
        return the bytes freed, or None when a pull or import is running (its blobs are
        not in a manifest yet). Download partials are kept: the next pull resumes them."""
        lock = FileLock(self.locks / "gc.lock")
        if not lock.try_acquire():
            return None
        try:
            manifests = [m for _, m in self.all_manifests()]
            used = {f.sha256 for m in manifests for f in m.files}
            used_snapshots = {self.snapshot_key(m) for m in manifests if m.needs_snapshot}
            freed = 0
            if self.blobs.is_dir():
                for blob in self.blobs.iterdir():
                    if blob.name.startswith("sha256-") and blob.name[7:] not in used:
                        freed += blob.stat().st_size
                        blob.unlink()
            if self.partials.is_dir():  # copies left by an import that was killed
                for stale in self.partials.glob("import-*.partial"):
                    stale.unlink(missing_ok=True)
            if self.snapshots.is_dir():
                for snap in self.snapshots.iterdir():
                    if snap.name not in used_snapshots and not snap.name.startswith(".tmp-"):
                        shutil.rmtree(snap, ignore_errors=True)
            return freed
        finally:
            lock.release()
