"""A local stand-in for the Hugging Face hub, on 127.0.0.1 with real sockets.

It speaks the subset localllm uses: `/api/models/{repo}/revision/{rev}?blobs=true`
(commit sha, siblings with sizes, git blob ids and LFS sha256, gated flag, cardData),
`/api/models?search=`, and `/{repo}/resolve/{rev}/{path}` (LFS files redirect to
`/cdn/{sha256}` as the hub redirects to its CDN), with HTTP Range. Errors carry the
hub's `X-Error-Code` / `X-Error-Message` headers. Faults are injected per test through
`hub.faults`: a connection dropped at a byte offset, a corrupted byte, a slow or
stalling body, a server ignoring Range. Every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".gguf", ".safetensors")


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    revision: str = field(default_factory=lambda: secrets.token_hex(20))
    gated: bool = False
    private: bool = False
    license: str | None = "mit"
    listed: dict = field(default_factory=dict)  # path -> sibling fields that replace the true ones (a hostile hub)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)


@dataclass
class Faults:
    drop_at: int | None = None  # close the connection when the body reaches this file offset...
    drops: int = 0  # ...this many times
    stall_at: int | None = None  # or stop sending there for `stall_s` (then close)...
    stall_s: float = 0.0
    stalls: int = 0  # ...this many times
    corrupt_at: int | None = None  # flip this byte of every LFS file served
    delay_s: float = 0.0  # sleep after each chunk
    hold_at: int | None = None  # or pause there until `release` is set (then go on)
    release: threading.Event = field(default_factory=threading.Event)
    chunk: int = 16 << 10
    ignore_range: bool = False


@dataclass
class Request:
    path: str
    range: str | None
    authorization: str | None
    status: int = 0
    body_bytes: int = 0


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.repos: dict[str, FakeRepo] = {}
        self.faults = Faults()
        self.token = token  # the only token the hub accepts
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._by_sha: dict[str, bytes] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], **kw) -> FakeRepo:
        repo = FakeRepo(repo_id, dict(files), **kw)
        self.repos[repo_id] = repo
        for data in files.values():
            self._by_sha[hashlib.sha256(data).hexdigest()] = data
        return repo

    def start(self) -> "FakeHub":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)

    def file_requests(self) -> list[Request]:
        return [r for r in self.log if "/resolve/" in r.path or r.path.startswith("/cdn/")]

    def bytes_served(self) -> int:
        return sum(r.body_bytes for r in self.log if r.path.startswith("/cdn/") or "/resolve/" in r.path)

    def data_for(self, sha256: str) -> bytes | None:
        return self._by_sha.get(sha256)


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            req = Request(unquote(url.path), self.headers.get("Range"), self.headers.get("Authorization"))
            hub.record(req)
            try:
                self._route(req, url)
            except (BrokenPipeError, ConnectionResetError):
                pass

        # auth: the real hub answers 401 to an invalid token, and 401 RepoNotFound for
        # private or missing repos when no token is sent

        def _token_state(self) -> str:
            auth = self.headers.get("Authorization")
            if auth is None:
                return "none"
            return "valid" if auth == f"Bearer {hub.token}" else "invalid"

        def _route(self, req: Request, url) -> None:
            parts = req.path.strip("/").split("/")
            if req.path == "/api/models":
                query = parse_qs(url.query).get("search", [""])[0].lower()
                found = [{"id": r} for r in hub.repos if query and query in r.lower()]
                return self._json(req, 200, found)
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = f"{parts[2]}/{parts[3]}"
                rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
                repo = self._repo_or_error(req, repo_id, for_file=False)
                if repo is None:
                    return
                if rev not in ("main", repo.revision):
                    return self._error(req, 404, "RevisionNotFound", "Invalid rev id")
                return self._json(req, 200, _repo_info(repo))
            if parts[0] == "cdn" and len(parts) == 2:
                data = hub.data_for(parts[1])
                if data is None:
                    return self._error(req, 404, "EntryNotFound", "no such object")
                return self._serve(req, data, lfs=True)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo = self._repo_or_error(req, f"{parts[0]}/{parts[1]}", for_file=True)
                if repo is None:
                    return
                if parts[3] not in ("main", repo.revision):
                    return self._error(req, 404, "RevisionNotFound", "Invalid rev id")
                path = "/".join(parts[4:])
                if path not in repo.files:
                    return self._error(req, 404, "EntryNotFound", f"{path} does not exist")
                data = repo.files[path]
                if repo.is_lfs(path):
                    req.status = 302
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{hashlib.sha256(data).hexdigest()}")
                    self.send_header("X-Repo-Commit", repo.revision)
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                return self._serve(req, data, lfs=False)
            self._error(req, 404, None, "not found")

        def _repo_or_error(self, req: Request, repo_id: str, for_file: bool) -> FakeRepo | None:
            state = self._token_state()
            if state == "invalid":
                self._error(req, 401, None, "Invalid credentials in Authorization header")
                return None
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and state != "valid"):
                self._error(req, 401 if state == "none" else 404, "RepoNotFound", "Repository not found")
                return None
            if for_file and repo.gated and state != "valid":
                self._error(req, 401, "GatedRepo", "Access to model is restricted")
                return None
            return repo

        def _json(self, req: Request, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, req: Request, status: int, code: str | None, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            req.status = status
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, req: Request, data: bytes, lfs: bool) -> None:
            faults = hub.faults
            if lfs and faults.corrupt_at is not None and faults.corrupt_at < len(data):
                data = data[: faults.corrupt_at] + bytes([data[faults.corrupt_at] ^ 0xFF]) + data[faults.corrupt_at + 1:]
            start, status = 0, 200
            if req.range and not faults.ignore_range:
                start = int(req.range.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    req.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            req.status = status
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            pos = start
            while pos < len(data):
                end = min(len(data), pos + faults.chunk)
                if faults.drops > 0 and faults.drop_at is not None and pos <= faults.drop_at < end:
                    end = faults.drop_at
                    self.wfile.write(data[pos:end])
                    req.body_bytes += end - pos
                    faults.drops -= 1
                    return self._cut()
                if faults.stalls > 0 and faults.stall_at is not None and pos <= faults.stall_at < end:
                    end = faults.stall_at
                    self.wfile.write(data[pos:end])
                    req.body_bytes += end - pos
                    self.wfile.flush()
                    faults.stalls -= 1
                    time.sleep(faults.stall_s)
                    return self._cut()
                if faults.hold_at is not None and pos <= faults.hold_at < end:
                    self.wfile.write(data[pos:faults.hold_at])
                    self.wfile.flush()
                    req.body_bytes += faults.hold_at - pos
                    pos = faults.hold_at
                    faults.release.wait(60)
                    faults.hold_at = None
                    continue
                self.wfile.write(data[pos:end])
                self.wfile.flush()
                req.body_bytes += end - pos
                pos = end
                if faults.delay_s:
                    time.sleep(faults.delay_s)

        def _cut(self) -> None:
            """Drop the connection mid-body, as a flaky network does."""
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def _repo_info(repo: FakeRepo) -> dict:
    siblings = []
    for path, data in repo.files.items():
        s = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if repo.is_lfs(path):
            s["blobId"] = git_blob_id(b"version https://git-lfs.github.com/spec/v1\n")  # a pointer's id
            s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        s.update(repo.listed.get(path, {}))
        siblings.append(s)
    return {
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "sha": repo.revision,
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "cardData": {"license": repo.license} if repo.license else {},
        "siblings": siblings,
    }
