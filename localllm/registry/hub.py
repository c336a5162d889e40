"""A small Hugging Face hub client over its HTTP API (httpx).

What it uses: `GET /api/models/{repo}/revision/{rev}?blobs=true` for the commit sha and
the file list with sizes and, for LFS files, sha256 (`siblings[].lfs.sha256`); files
from `/{repo}/resolve/{commit}/{path}` with `Range` (the hub redirects LFS files to a CDN;
httpx drops the Authorization header when a redirect leaves the hub's host);
`/api/models?search=` for "did you mean" suggestions. The base URL is `HF_ENDPOINT`
(default https://huggingface.co) and the token `HF_TOKEN`, when set.

Hub errors become one-line `UserError`s: the hub marks them with `X-Error-Code`
(GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound) and answers 401 for a
private, gated or missing repo when no token is sent.
"""

from __future__ import annotations

import difflib
import os
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote

import httpx

from localllm import __version__
from localllm.registry.errors import HubAccessError, HubUnavailableError, ModelNotFoundError

DEFAULT_ENDPOINT = "https://huggingface.co"
# What a hub may say a file's digests are. They name files in the store (blobs, partials,
# locks), so anything else (`x/../../keep`) is refused before it reaches a path.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
GIT_OID_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a dropped or failing request."""

    attempts: int = 8  # consecutive failures without progress before giving up
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0
    read_timeout_s: float = 30.0  # a stalled connection counts as dropped after this
    connect_timeout_s: float = 15.0

    def delay(self, failures: int) -> float:
        """Exponential backoff with jitter, so concurrent clients do not retry in step."""
        base = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, failures - 1))
        return base * (0.75 + random.random() * 0.5)


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str | None  # LFS files: the hub's sha256 of the content
    git_oid: str | None  # every file: its git blob id (sha1 of "blob <size>\0" + content)


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str  # the commit sha every download of this pull is pinned to
    files: tuple[HubFile, ...]
    license: str | None
    gated: bool


def _digest(value, pattern: re.Pattern, kind: str, path) -> str | None:
    """A digest from the hub's listing, lowercased; ValueError unless it is plain hex."""
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value.lower()):
        raise ValueError(f"the {kind} of {str(path)[:200]!r} is {str(value)[:80]!r}, not a hex digest")
    return value.lower()


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


class HubClient:
    def __init__(self, endpoint: str | None = None, token: str | None = None, retry: RetryPolicy | None = None):
        self.endpoint = (endpoint or hub_endpoint()).rstrip("/")
        self.token = token if token is not None else hub_token()
        self.retry = retry or RetryPolicy()
        headers = {"User-Agent": f"localllm/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            headers=headers,
            follow_redirects=True,
            timeout=httpx.Timeout(self.retry.read_timeout_s, connect=self.retry.connect_timeout_s),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HubClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # metadata

    def repo_snapshot(self, repo: str, revision: str = "main") -> RepoSnapshot:
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        resp = self._get_json_with_retry(url, {"blobs": "true"}, what=f"hf.co/{repo}")
        self.raise_for_status(resp, repo, revision=revision)
        try:
            data = resp.json()
            files = tuple(
                HubFile(
                    path=str(s["rfilename"]),
                    size=int((s.get("lfs") or {}).get("size", s.get("size") or 0)),
                    sha256=_digest((s.get("lfs") or {}).get("sha256"), SHA256_HEX, "sha256", s["rfilename"]),
                    git_oid=_digest(s.get("blobId"), GIT_OID_HEX, "blob id", s["rfilename"]),
                )
                for s in data.get("siblings") or []
            )
            sha = str(data["sha"])
            if any(f.size < 0 for f in files):
                raise ValueError("a negative file size")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise HubUnavailableError(
                f"{self.endpoint} answered with an unexpected file list for hf.co/{repo} ({e}): "
                "check HF_ENDPOINT points at a Hugging Face hub"
            ) from None
        card = data.get("cardData") or {}
        license_ = card.get("license") if isinstance(card, dict) else None
        return RepoSnapshot(repo, sha, files, str(license_) if license_ else None, bool(data.get("gated")))

    def similar_repos(self, repo: str, n: int = 3) -> list[str]:
        """Repos whose id is close to `repo` (best effort: [] when the search fails)."""
        name = repo.split("/")[-1]
        found: list[str] = []
        for query in dict.fromkeys([name, name.split("-")[0]]):
            try:
                resp = self._http.get(f"{self.endpoint}/api/models", params={"search": query, "limit": "20"}, timeout=5.0)
                if resp.status_code == 200:
                    found += [str(m["id"]) for m in resp.json() if isinstance(m, dict) and "id" in m]
            except (httpx.HTTPError, ValueError, KeyError):
                return []
            if found:
                break
        found = [f for f in dict.fromkeys(found) if f.lower() != repo.lower()]
        found.sort(key=lambda f: -difflib.SequenceMatcher(None, f.lower(), repo.lower()).ratio())
        return found[:n]

    # downloads

    def file_url(self, repo: str, revision: str, path: str) -> str:
        return f"{self.endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"

    @contextmanager
    def stream(self, url: str, start: int) -> Iterator[httpx.Response]:
        headers = {"Accept-Encoding": "identity"}  # byte offsets must be the file's own
        if start > 0:
            headers["Range"] = f"bytes={start}-"
        with self._http.stream("GET", url, headers=headers) as resp:
            yield resp

    # errors

    def _get_json_with_retry(self, url: str, params: dict, what: str) -> httpx.Response:
        failures = 0
        while True:
            try:
                resp = self._http.get(url, params=params)
                if resp.status_code not in RETRYABLE_STATUS:
                    return resp
                problem = f"HTTP {resp.status_code}"
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            failures += 1
            if failures >= min(self.retry.attempts, 4):  # a listing is small: fail fast when offline
                raise HubUnavailableError(
                    f"cannot get the file list of {what} from {self.endpoint} ({problem}, {failures} tries): "
                    "check your network and HF_ENDPOINT, then pull again"
                )
            time.sleep(self.retry.delay(failures))

    def raise_for_status(self, resp: httpx.Response, repo: str, revision: str = "main", path: str | None = None) -> None:
        """Turn a hub error answer into a UserError saying what to do."""
        status = resp.status_code
        if status < 400:
            return
        code = resp.headers.get("X-Error-Code", "")
        message = resp.headers.get("X-Error-Message", "")
        name = f"hf.co/{repo}"
        page = f"{self.endpoint}/{repo}"
        if "invalid credentials" in message.lower() or "invalid username or password" in message.lower():
            raise HubAccessError(
                f"{self.endpoint} rejected the token in HF_TOKEN (invalid credentials) while fetching {name}: "
                "make a new token at https://huggingface.co/settings/tokens, or unset HF_TOKEN for public models"
            )
        if code == "GatedRepo":
            if self.token:
                raise HubAccessError(
                    f"{name} is a gated model and the account of your HF_TOKEN has no access yet: "
                    f"accept its licence at {page}, wait for approval, then pull again"
                )
            raise HubAccessError(
                f"{name} is a gated model: accept its licence at {page}, then set HF_TOKEN to a token "
                "of that account (https://huggingface.co/settings/tokens) and pull again"
            )
        if code == "RevisionNotFound":
            raise ModelNotFoundError(f"{name} has no revision {revision!r}: check the branch, tag or commit")
        if code == "EntryNotFound" or (status == 404 and path is not None):
            raise ModelNotFoundError(
                f"{path} is not in {name} at revision {revision[:12]}: the repo changed since it was listed; pull again"
            )
        if status == 403 and path is not None:
            raise HubAccessError(
                f"{self.endpoint} refused {path} of {name} (HTTP 403{': ' + message if message else ''}): "
                f"check that your HF_TOKEN may read {page}, then pull again"
            )
        if status in (401, 403, 404):
            hint = self.similar_repos(repo)
            did_you_mean = f"; did you mean {', '.join('hf.co/' + h for h in hint)}?" if hint else ""
            if status == 404 or self.token:
                private = " (or it is private and your HF_TOKEN cannot see it)" if self.token else ""
                raise ModelNotFoundError(
                    f"{name} was not found on {self.endpoint}{private}: check the owner and repo name{did_you_mean}"
                )
            raise HubAccessError(
                f"{name}: not found, or a private or gated repo (the hub does not say which without a token){did_you_mean}: "
                "check the name; for a private or gated model set HF_TOKEN to a token with access "
                "(https://huggingface.co/settings/tokens)"
            )
        detail = f": {message}" if message else ""
        raise HubUnavailableError(f"{self.endpoint} answered HTTP {status} for {name}{detail}: try again later")
