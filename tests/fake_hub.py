"""A small, self-contained fake of the Hugging Face Hub HTTP API, for tests.

It runs on loopback (``127.0.0.1``, random free port) in a background thread, uses the standard library
only (``http.server.ThreadingHTTPServer``) and keeps everything in memory. The real ``huggingface_hub`` client,
pointed at it with :func:`configure_hf_hub` (or the ``hub_env`` fixture), can create repos, upload folders
(small text files as well as binaries of ~100 MB), list/download files at any revision, fill and reuse the
default cache (also offline), and gets the same typed errors as from the real Hub.

Checked against: ``huggingface_hub`` 2.4.0 (with ``hf_xet`` 1.8.0 installed, xet enabled or disabled in the
client), Python 3.11.

Usage (pytest)::

    from fake_hub import fake_hub, hub_env   # or re-export them from a conftest.py

    def test_roundtrip(hub_env, tmp_path):
        api = HfApi()                      # create clients *after* hub_env (see pitfalls below)
        api.create_repo("me/model", exist_ok=True)
        info = api.upload_folder(folder_path=tmp_path, repo_id="me/model", commit_message="v1")
        path = snapshot_download("me/model", revision=info.oid)
        hub_env.go_offline()               # from now on HF_HUB_OFFLINE=1 for this test
        assert snapshot_download("me/model") == path
        hub_env.fake_hub.tamper("me/model", "weights.bin", lambda b: b[:-1] + bytes([b[-1] ^ 1]))

Without pytest: ``with FakeHub() as hub: ...`` and ``configure_hf_hub(monkeypatch_like, hub.url, home_dir)``
(``pytest.MonkeyPatch()`` works outside of fixtures; call its ``undo()`` at the end).

Endpoints implemented (``{type}`` is ``models``/``datasets``/``spaces``; model repos have no URL prefix for
``resolve`` and LFS, datasets/spaces use ``datasets/`` and ``spaces/``; ``{rev}`` is a branch, a tag, a full
40-hex commit sha, ``refs/heads/<b>``/``refs/tags/<t>``, or a pull request's ``refs/pr/<n>``, URL-quoted as the
client sends it)::

    POST   /api/repos/create                          create_repo (409 if it exists -> exist_ok works)
    DELETE /api/repos/delete                          delete_repo
    GET    /api/{type}/{repo_id}                      model_info/repo_info (siblings; blobs=1 adds size/blobId/lfs)
    GET    /api/{type}/{repo_id}/revision/{rev}       same, at a revision (this is what snapshot_download calls)
    GET    /api/{type}/{repo_id}/tree/{rev}[/{path}]  list_repo_tree (recursive, expand -> lastCommit); no pagination
    POST   /api/{type}/{repo_id}/paths-info/{rev}     get_paths_info
    POST   /api/{type}/{repo_id}/preupload/{rev}      upload mode per file ("regular" by default, see below)
    POST   /api/{type}/{repo_id}/commit/{rev}         ndjson commit: file (base64), lfsFile, deletedFile, deletedFolder;
                                                  ``?create_pr=1`` opens a pull request from {rev} (or the header's
                                                  parentCommit) and commits to its ``refs/pr/<n>`` instead
    POST   /api/{type}/{repo_id}/discussions           create_pull_request (pull requests only, no plain discussions)
    GET    /api/{type}/{repo_id}/discussions/{n}       get_discussion_details (no events, no diff)
    GET    /api/{type}/{repo_id}/commits/{rev}        list_repo_commits
    GET    /api/{type}/{repo_id}/refs                 list_repo_refs (pull requests with include_prs=1)
    POST/DELETE /api/{type}/{repo_id}/branch/{name}   create_branch / delete_branch
    POST   /api/{type}/{repo_id}/tag/{rev}            create_tag;  DELETE /api/{type}/{repo_id}/tag/{tag}
    GET    /api/{type}/{repo_id}/xet-{read,write}-token/...   always 501 (this fake never speaks Xet)
    GET    /api/whoami-v2, /api/agent-harnesses; POST /api/validate-yaml (README.md uploads)
    HEAD/GET /[datasets/|spaces/]{repo_id}/resolve/{rev}/{path}   file download; headers X-Repo-Commit, ETag,
                                                  Content-Length, Accept-Ranges (+ single-range GET -> 206), and
                                                  X-Linked-Etag / X-Linked-Size for LFS-stored files. No redirect.
    POST   /[datasets/|spaces/]{repo_id}.git/info/lfs/objects/batch   basic LFS transfer (only with lfs_uploads=True)
    PUT    /_lfs/{type}/{repo_id}/{sha256}  (+ POST .../verify)        the upload target announced by the batch call

Errors carry ``X-Error-Code``/``X-Error-Message`` like the Hub, so the client raises its own exceptions:
missing or private-without-token repo -> 404/401 ``RepoNotFound`` (RepositoryNotFoundError), unknown revision ->
404 ``RevisionNotFound`` (RevisionNotFoundError), missing file -> 404 ``EntryNotFound`` (RemoteEntryNotFoundError /
EntryNotFoundError; the ``X-Repo-Commit`` header is set so the client caches the non-existence like on the Hub).
Write calls without ``Authorization: Bearer ...`` get 401; any token string is accepted.

Upload modes and Xet (how huggingface_hub 2.4.0 decides):
  * The client sends ``POST preupload`` and the server answers ``uploadMode`` "regular" or "lfs" per file. Regular
    files travel base64-encoded inside the ndjson ``commit`` call. For "lfs" files the client uses Xet whenever
    ``hf_xet`` is importable and ``HF_HUB_DISABLE_XET`` is not set -- *regardless of anything the server says* --
    and only otherwise the basic LFS protocol (batch + PUT). Also, with hf_xet available, ``upload_folder`` goes
    through ``_upload_pipeline.pipelined_upload`` (which may split into several commits once >100 MiB of regular
    content is pending) instead of ``create_commit``.
  * Hence the default here: every file is "regular", which never touches Xet whatever the client configuration.
    100 MB binaries work: a 95 MB file uploads in ~2 s with ~750 MB peak RSS (client + server in one process,
    the payload is base64 JSON). ``FakeHub(lfs_uploads=True)`` answers "lfs" for binary/large files and serves
    the LFS batch/PUT endpoints (same file: ~0.6 s, ~330 MB); that requires the client to run with Xet disabled
    (``configure_hf_hub(..., disable_xet=True)``, the default of the ``hub_env`` fixture).
  * Downloads use Xet only if the HEAD response has ``X-Xet-Hash`` (+ refresh route/link) or the tree listing has
    ``xetHash``; this server never sends either, so downloads are plain HTTP GETs of ``/resolve``.
  * Independently of the upload mode, a stored file is flagged as LFS (tree ``lfs`` field, siblings ``lfs`` with
    sha256, ``X-Linked-Etag`` = sha256) when it is binary (NUL byte in its first 512 bytes) or >= ``lfs_threshold``
    bytes (10 MiB), like on the Hub; other files have their git blob sha1 as ETag/blobId.
  * Like the Hub, ``create_repo`` makes an initial commit holding a ``.gitattributes`` file (disable with
    ``FakeHub(initial_commit=False)``), so it shows up in ``snapshot_download`` results.

Pitfalls in huggingface_hub 2.4.0 that :func:`configure_hf_hub` handles:
  * ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_XET`` ... are read once, at
    import, into ``huggingface_hub.constants``; setting env vars in a test is not enough. Derived values are
    frozen too: ``HUGGINGFACE_CO_URL_TEMPLATE`` (used by ``hf_hub_url``/``hf_hub_download``), ``HF_TOKEN_PATH``,
    ``AGENT_HARNESSES_PATH``, ``HF_URL_HOSTS``, ``utils._http._HUB_ORIGINS``, ``utils._cache_manager.HF_HUB_CACHE``.
  * Offline mode is read through ``constants.is_offline_mode()`` (i.e. ``constants.HF_HUB_OFFLINE``) at request
    time by the HTTP client hook, so flipping that constant switches a running process offline.
  * ``HfApi()`` copies ``constants.ENDPOINT`` when constructed, and the module-level functions
    (``huggingface_hub.upload_folder``, ``create_repo``, ``model_info``...) are bound methods of a singleton
    ``huggingface_hub.hf_api.api`` created at import -> its ``endpoint`` is patched as well; ``HfApi`` objects
    created *before* the patch still point to the old endpoint.
  * The first request of a process builds the user agent and fetches ``{ENDPOINT}/api/agent-harnesses`` (cached
    on disk under HF_HOME); the fixture pre-seeds the in-process registry so no such request or file happens.
  * The client does not checksum plain-HTTP downloads: it only compares the byte count with the advertised size
    (``X-Linked-Size`` for LFS files, else ``Content-Length``). So a same-size tampered file is cached silently,
    while a tampered LFS file of another size fails with ``OSError('Consistency check failed ...')``.
  * The cache is keyed by ETag: a tampered file is only fetched if its blob is not cached yet (use a fresh cache).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import http.server
import itertools
import json
import re
import socket
import threading
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

__all__ = [
    "FakeHub",
    "HubEnv",
    "configure_hf_hub",
    "fake_hub",
    "hub_env",
    "git_blob_oid",
]

DEFAULT_USER = "fake-user"
DEFAULT_TOKEN = "hf_test"
LFS_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_PR_REF = re.compile(r"^refs/pr/(\d+)$")

# Abridged version of the .gitattributes the Hub puts in the initial commit of a new repo.
GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.keras filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""


# --------------------------------------------------------------------------------------------------- data model


def git_blob_oid(data: bytes) -> str:
    """git's object id of a blob holding ``data`` (what the Hub reports as blobId/ETag of a non-LFS file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


@dataclasses.dataclass(frozen=True, eq=False)
class _Blob:
    data: bytes
    is_lfs: bool
    sha256: str
    git_oid: str  # git blob id of the raw content

    @classmethod
    def make(cls, data: bytes, is_lfs: bool) -> "_Blob":
        return cls(data=data, is_lfs=is_lfs, sha256=hashlib.sha256(data).hexdigest(), git_oid=git_blob_oid(data))

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def blob_id(self) -> str:
        """git id of what git stores: the LFS pointer for LFS files, the content otherwise."""
        return git_blob_oid(self.pointer) if self.is_lfs else self.git_oid

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.git_oid

    def same_as(self, other: "_Blob | None") -> bool:
        return other is not None and other.git_oid == self.git_oid and other.is_lfs == self.is_lfs


@dataclasses.dataclass
class _Commit:
    oid: str
    parents: list[str]
    title: str
    message: str
    date: str
    files: dict[str, _Blob]


@dataclasses.dataclass
class _PullRequest:
    num: int
    title: str
    description: str
    base: str  # the branch it asks to merge into
    head: str  # commit sha at the tip of refs/pr/<num>
    created_at: str


@dataclasses.dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, _Commit] = dataclasses.field(default_factory=dict)
    branches: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    pulls: dict[int, _PullRequest] = dataclasses.field(default_factory=dict)
    lfs_store: dict[str, bytes] = dataclasses.field(default_factory=dict)  # sha256 -> content (LFS PUTs)
    overrides: dict[tuple[str, str], bytes] = dataclasses.field(default_factory=dict)  # (commit, path) -> bytes


class HubError(Exception):
    """An error answered to the client, with the Hub's error headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found(repo_type: str, repo_id: str, status: int = 404) -> HubError:
    return HubError(status, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")


# --------------------------------------------------------------------------------------------------- the server


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    hub: "FakeHub"


class FakeHub:
    """In-memory fake Hugging Face Hub served on ``http://127.0.0.1:<random port>``.

    Args:
        lfs_uploads: answer "lfs" in preupload for binary/large files and serve the basic LFS transfer endpoints.
            Only for clients with Xet disabled (see module docstring). Default: every upload is "regular".
        lfs_threshold: files of this size or larger (or binary) are stored/advertised as LFS files.
        initial_commit: create_repo makes an initial commit with a ``.gitattributes`` file, like the Hub.
        username: the user that owns repos created without a namespace (and ``whoami``).

    Attributes:
        url: base URL (``HF_ENDPOINT`` value), set by :meth:`start`.
        requests: list of ``(method, path)`` received, for assertions (e.g. nothing hit ``xet-`` endpoints).
        authorizations: the ``Authorization`` header of each of those requests (``None`` when absent), same order.
        errors: tracebacks of unexpected server-side exceptions (answered with HTTP 500).
    """

    def __init__(
        self,
        *,
        lfs_uploads: bool = False,
        lfs_threshold: int = LFS_THRESHOLD,
        initial_commit: bool = True,
        username: str = DEFAULT_USER,
    ) -> None:
        self.lfs_uploads = lfs_uploads
        self.lfs_threshold = lfs_threshold
        self.initial_commit = initial_commit
        self.username = username
        self.url: str = ""
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.errors: list[str] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "FakeHub":
        if self._server is not None:
            return self
        server = _HTTPServer(("127.0.0.1", 0), _Handler)
        server.hub = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # unblock handler threads waiting on idle keep-alive connections
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- public helpers (server side, no HTTP)

    def create_repo(self, repo_id: str, repo_type: str = "model", *, private: bool = False) -> None:
        """Create a repo directly (like ``HfApi.create_repo``); no error if it exists."""
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self._create_repo(repo_type, repo_id, private)

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes | str],
        message: str = "Upload files",
        *,
        deletions: Iterable[str] = (),
        revision: str = "main",
        repo_type: str = "model",
    ) -> str:
        """Commit ``files`` (path -> content) directly on a branch, creating the repo if needed. Returns the sha."""
        self.create_repo(repo_id, repo_type)
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if revision not in repo.branches:
                raise KeyError(f"No branch {revision!r} in {repo_id}")
            new_files = dict(repo.commits[repo.branches[revision]].files) if repo.branches[revision] else {}
            for path in deletions:
                new_files.pop(path, None)
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else bytes(content)
                new_files[path] = self._make_blob(data)
            return self._add_commit(repo, revision, new_files, message, "").oid

    def resolve(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> str:
        """Commit sha that ``revision`` (default: main) points to."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return self._resolve_revision(repo, revision).oid

    def list_files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> list[str]:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return sorted(self._resolve_revision(repo, revision).files)

    def get_file(self, repo_id: str, filename: str, revision: str | None = None, repo_type: str = "model") -> bytes:
        """The bytes the server would serve for a file (tampered content included)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve_revision(repo, revision)
            if filename not in commit.files:
                raise KeyError(filename)
            return repo.overrides.get((commit.oid, filename), commit.files[filename].data)

    def tamper(
        self,
        repo_id: str,
        filename: str,
        new_bytes: bytes | Callable[[bytes], bytes],
        *,
        revision: str = "main",
        repo_type: str = "model",
    ) -> None:
        """Serve other bytes for ``filename`` at ``revision`` (default: latest ``main``), changing nothing else.

        The commit sha, ETag, sizes, sha256/blobId in info & tree listings keep describing the original content,
        as a corrupted download or a bad mirror would look. ``new_bytes`` may be a function of the original bytes.
        Keep the same length to get past the client's only check (the size); see module docstring.
        """
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve_revision(repo, revision)
            if filename not in commit.files:
                raise KeyError(f"{filename!r} is not in {repo_id}@{commit.oid}")
            original = commit.files[filename].data
            data = new_bytes(original) if callable(new_bytes) else new_bytes
            repo.overrides[(commit.oid, filename)] = bytes(data)

    def clear_tampering(self) -> None:
        with self._lock:
            for repo in self._repos.values():
                repo.overrides.clear()

    # ---------------------------------------------------------------- internals (call with self._lock held)

    def _make_blob(self, data: bytes) -> _Blob:
        return _Blob.make(data, is_lfs=self._needs_lfs(len(data), data[:512]))

    def _needs_lfs(self, size: int, sample: bytes) -> bool:
        return size > 0 and (size >= self.lfs_threshold or b"\0" in sample[:512])

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        repo = _Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
        self._repos[(repo_type, repo_id)] = repo
        repo.branches["main"] = ""  # empty branch until the first commit
        if self.initial_commit:
            self._add_commit(repo, "main", {".gitattributes": _Blob.make(GITATTRIBUTES.encode(), False)},
                             "initial commit", "")
        return repo

    def _get_repo(self, repo_type: str, repo_id: str, authorized: bool = True) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _repo_not_found(repo_type, repo_id)
        if repo.private and not authorized:
            raise _repo_not_found(repo_type, repo_id, status=401)
        return repo

    def _pull(self, repo: _Repo, ref: str) -> _PullRequest | None:
        """The pull request ``ref`` names (``refs/pr/<n>``); None for any other ref; 404 for an unknown PR."""
        match = _PR_REF.match(ref)
        if match is None:
            return None
        pull = repo.pulls.get(int(match.group(1)))
        if pull is None:
            raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
        return pull

    def _open_pull(self, repo: _Repo, title: str, description: str, base: str, head: str) -> _PullRequest:
        """A new pull request whose ref starts at ``head`` (Hub discussions and PRs share one numbering)."""
        pull = _PullRequest(len(repo.pulls) + 1, title, description, base, head, _now())
        repo.pulls[pull.num] = pull
        return pull

    def _add_commit(self, repo: _Repo, branch: str, files: dict[str, _Blob], title: str, description: str) -> _Commit:
        """A commit on ``branch``, or on a pull request's ``refs/pr/<n>``."""
        pull = self._pull(repo, branch)
        parent = (pull.head if pull is not None else repo.branches.get(branch)) or ""
        h = hashlib.sha1()
        h.update(f"{next(self._counter)}\0{parent}\0{title}\0{description}\0{_now()}\0".encode())
        for path in sorted(files):
            h.update(f"{path}\0{files[path].blob_id}\0".encode())
        commit = _Commit(
            oid=h.hexdigest(),
            parents=[parent] if parent else [],
            title=title,
            message=description,
            date=_now(),
            files=files,
        )
        repo.commits[commit.oid] = commit
        if pull is not None:
            pull.head = commit.oid
        else:
            repo.branches[branch] = commit.oid
        return commit

    def _resolve_revision(self, repo: _Repo, revision: str | None) -> _Commit:
        rev = revision or "main"
        oid: str | None = None
        if rev.startswith("refs/heads/"):
            oid = repo.branches.get(rev[len("refs/heads/"):])
        elif rev.startswith("refs/tags/"):
            oid = repo.tags.get(rev[len("refs/tags/"):])
        elif _PR_REF.match(rev):
            oid = self._pull(repo, rev).head
        elif rev in repo.branches:
            oid = repo.branches[rev]
        elif rev in repo.tags:
            oid = repo.tags[rev]
        elif _FULL_SHA.match(rev) and rev in repo.commits:
            oid = rev
        if not oid:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[oid]

    def _history(self, repo: _Repo, commit: _Commit) -> list[_Commit]:
        out = [commit]
        while out[-1].parents:
            out.append(repo.commits[out[-1].parents[0]])
        return out

    def _dir_oid(self, files: dict[str, _Blob], directory: str) -> str:
        prefix = directory + "/"
        h = hashlib.sha1(b"tree\0")
        for path in sorted(p for p in files if p.startswith(prefix)):
            h.update(f"{path}\0{files[path].blob_id}\0".encode())
        return h.hexdigest()

    def _last_commit(self, repo: _Repo, commit: _Commit, path: str, is_dir: bool) -> dict:
        def key(c: _Commit) -> str | None:
            if is_dir:
                return self._dir_oid(c.files, path) if any(p.startswith(path + "/") for p in c.files) else None
            blob = c.files.get(path)
            return None if blob is None else blob.blob_id

        current, wanted = commit, key(commit)
        while current.parents:
            parent = repo.commits[current.parents[0]]
            if key(parent) != wanted:
                break
            current = parent
        return {"id": current.oid, "title": current.title, "date": current.date}

    def _file_entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
        blob = commit.files[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.blob_id, "size": blob.size, "path": path}
        if blob.is_lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path, is_dir=False)
            entry["securityFileStatus"] = {"status": "safe", "avScan": None, "pickleImportScan": None}
        return entry

    def _dir_entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict:
        entry: dict[str, Any] = {"type": "directory", "oid": self._dir_oid(commit.files, path), "size": 0,
                                 "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit(repo, commit, path, is_dir=True)
        return entry

    def _tree(self, repo: _Repo, commit: _Commit, base: str, recursive: bool, expand: bool) -> list[dict]:
        base = base.strip("/")
        if base in commit.files:
            return [self._file_entry(repo, commit, base, expand)]
        prefix = base + "/" if base else ""
        under = sorted(p for p in commit.files if p.startswith(prefix))
        if base and not under:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound",
                           headers={"X-Repo-Commit": commit.oid})
        dirs: set[str] = set()
        files: list[str] = []
        for path in under:
            parts = path[len(prefix):].split("/")
            if recursive:
                files.append(path)
                dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            elif len(parts) == 1:
                files.append(path)
            else:
                dirs.add(prefix + parts[0])
        return [self._dir_entry(repo, commit, d, expand) for d in sorted(dirs)] + [
            self._file_entry(repo, commit, f, expand) for f in files
        ]

    def _info(self, repo: _Repo, commit: _Commit | None, blobs: bool) -> dict:
        namespace = repo.repo_id.split("/")[0] if "/" in repo.repo_id else self.username
        siblings = []
        files = commit.files if commit is not None else {}
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                blob = files[path]
                sibling.update(size=blob.size, blobId=blob.blob_id)
                if blob.is_lfs:
                    sibling["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": namespace,
            "sha": commit.oid if commit is not None else None,
            "lastModified": commit.date if commit is not None else repo.created_at,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(b.size for b in files.values()),
        }
        if repo.repo_type == "model":
            info.update(modelId=repo.repo_id, spaces=[])
        elif repo.repo_type == "space":
            info.update(sdk="static", runtime={"stage": "RUNNING", "hardware": {"current": None, "requested": None}})
        return info


# --------------------------------------------------------------------------------------------------- HTTP handler


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    # ---------------------------------------------------------------- plumbing

    def setup(self) -> None:
        super().setup()
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.hub._lock:
            self.server.hub._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self._responded = True
        self.send_response(status)
        all_headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
        all_headers.update(headers or {})
        for key, value in all_headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, err: HubError) -> None:
        message = " ".join(err.message.split()).encode("latin-1", "replace").decode("latin-1")
        headers = {"X-Error-Message": message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json({"error": err.message}, status=err.status, headers=headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _require_token(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid username or password.")

    def _dispatch(self) -> None:
        self._responded = False
        raw_path, _, raw_query = self.path.partition("?")
        self.query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        with self.hub._lock:
            self.hub.requests.append((self.command, self.path))
            self.hub.authorizations.append(self.headers.get("Authorization"))
        try:
            self.body = self._read_body() if self.command in ("POST", "PUT", "DELETE", "PATCH") else b""
            self._route(raw_path)
        except HubError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:  # a bug in the fake: answer 500 and keep the traceback for the test to see
            tb = traceback.format_exc()
            with self.hub._lock:
                self.hub.errors.append(f"{self.command} {self.path}\n{tb}")
            if self._responded:
                self.close_connection = True
                return
            try:
                self._error(HubError(500, "Internal error in FakeHub: " + tb.strip().splitlines()[-1]))
            except OSError:
                self.close_connection = True

    # ---------------------------------------------------------------- routing

    def _route(self, raw_path: str) -> None:
        segs = raw_path.split("/")[1:]
        method = self.command
        if segs and segs[-1] == "":
            segs = segs[:-1]
        if not segs:
            raise HubError(404, "Not found")
        if segs[0] == "api":
            return self._route_api(segs[1:], method)
        if segs[0] == "_lfs":
            return self._route_lfs_storage(segs[1:], method)
        # LFS batch: /[datasets/|spaces/]ns/name.git/info/lfs/objects/batch
        if raw_path.endswith(".git/info/lfs/objects/batch") and method == "POST":
            head = segs[:-4]
            repo_type = "model"
            if head and head[0] in ("datasets", "spaces") and len(head) == 3:
                repo_type, head = REPO_TYPES[head[0]], head[1:]
            repo_id = urllib.parse.unquote("/".join(head))[: -len(".git")]
            return self._lfs_batch(repo_type, repo_id)
        # resolve: /[datasets/|spaces/]ns/name/resolve/rev/path...
        repo_type = "model"
        if segs[0] in ("datasets", "spaces") and len(segs) >= 5 and segs[3] == "resolve":
            repo_type, segs = REPO_TYPES[segs[0]], segs[1:]
        if len(segs) >= 4 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id = f"{urllib.parse.unquote(segs[0])}/{urllib.parse.unquote(segs[1])}"
            revision = urllib.parse.unquote(segs[3])
            filename = urllib.parse.unquote("/".join(segs[4:]))
            return self._resolve(repo_type, repo_id, revision, filename)
        if len(segs) >= 3 and segs[1] == "resolve":  # canonical repo id without namespace: none exist here
            raise _repo_not_found(repo_type, urllib.parse.unquote(segs[0]))
        raise HubError(404, f"Not found: {method} {raw_path} (not implemented by FakeHub)")

    def _route_api(self, segs: list[str], method: str) -> None:
        if segs == ["whoami-v2"] and method == "GET":
            self._require_token()
            user = self.hub.username
            return self._json({"type": "user", "id": "0" * 24, "name": user, "fullname": user, "orgs": [],
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "fake", "role": "write"}}})
        if segs == ["agent-harnesses"]:
            return self._json({"standardEnvVars": [], "harnesses": {}})
        if segs == ["validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if len(segs) == 2 and segs[0] in REPO_TYPES and method == "GET":  # canonical repo without namespace
            raise _repo_not_found(REPO_TYPES[segs[0]], urllib.parse.unquote(segs[1]))
        if len(segs) >= 3 and segs[0] in REPO_TYPES:
            repo_type = REPO_TYPES[segs[0]]
            repo_id = f"{urllib.parse.unquote(segs[1])}/{urllib.parse.unquote(segs[2])}"
            rest = segs[3:]
            action = rest[0] if rest else None
            arg = urllib.parse.unquote("/".join(rest[1:])) if len(rest) > 1 else None
            if action is None and method == "GET":
                return self._repo_info(repo_type, repo_id, None)
            if action == "revision" and method == "GET" and arg:
                return self._repo_info(repo_type, repo_id, arg)
            if action == "tree" and method == "GET" and len(rest) >= 2:
                revision = urllib.parse.unquote(rest[1])
                path = urllib.parse.unquote("/".join(rest[2:]))
                return self._tree(repo_type, repo_id, revision, path)
            if action == "paths-info" and method == "POST" and arg:
                return self._paths_info(repo_type, repo_id, arg)
            if action == "preupload" and method == "POST" and arg:
                return self._preupload(repo_type, repo_id, arg)
            if action == "commit" and method == "POST" and arg:
                return self._commit(repo_type, repo_id, arg)
            if action == "commits" and method == "GET" and arg:
                return self._commits(repo_type, repo_id, arg)
            if action == "refs" and method == "GET":
                return self._refs(repo_type, repo_id)
            if action == "branch" and arg and method in ("POST", "DELETE"):
                return self._branch(repo_type, repo_id, arg)
            if action == "tag" and arg and method in ("POST", "DELETE"):
                return self._tag(repo_type, repo_id, arg)
            if action == "discussions" and arg is None and method == "POST":
                return self._create_pull(repo_type, repo_id)
            if action == "discussions" and arg and arg.isdigit() and method == "GET":
                return self._pull_details(repo_type, repo_id, int(arg))
            if action and action.startswith("xet-"):
                raise HubError(501, "FakeHub does not implement Xet storage. Run the client with "
                                    "HF_HUB_DISABLE_XET=1 or use FakeHub(lfs_uploads=False).")
            with self.hub._lock:
                self._repo(repo_type, repo_id)  # RepoNotFound first, like the Hub
        raise HubError(404, f"Not found: {method} /api/{'/'.join(segs)} (not implemented by FakeHub)")

    # ---------------------------------------------------------------- repos & refs

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    def _create_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        name, organization = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        repo_id = f"{organization or self.hub.username}/{name}"
        url = f"{self.hub.url}/{_URL_PREFIX.get(repo_type, '')}{repo_id}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub._repos:
                return self._json({"error": f"You already created this {repo_type} repo", "url": url}, 409,
                                  headers={"X-Error-Message": f"You already created this {repo_type} repo"})
            self.hub._create_repo(repo_type, repo_id, private)
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        self._require_token()
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.username}/{payload.get('name')}"
        with self.hub._lock:
            if self.hub._repos.pop((repo_type, repo_id), None) is None:
                raise _repo_not_found(repo_type, repo_id)
        self._json({})

    def _repo(self, repo_type: str, repo_id: str) -> _Repo:
        return self.hub._get_repo(repo_type, repo_id, authorized=self._authorized())

    def _truthy(self, name: str) -> bool:
        values = self.query.get(name) or self.query.get(name + "[]") or []
        return any(v.lower() in ("1", "true", "yes") for v in values)

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            if revision is None and not repo.branches.get("main"):
                commit = None  # empty repo: info without sha
            else:
                commit = self.hub._resolve_revision(repo, revision)
            info = self.hub._info(repo, commit, blobs=self._truthy("blobs"))
        self._json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self.hub._resolve_revision(repo, revision)
            entries = self.hub._tree(repo, commit, path, self._truthy("recursive"), self._truthy("expand"))
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            payload = self._json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = urllib.parse.parse_qs(self.body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = any(v.lower() == "true" for v in form.get("expand", []))
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self.hub._resolve_revision(repo, revision)
            out = []
            for path in paths:
                path = path.strip("/")
                if path in commit.files:
                    out.append(self.hub._file_entry(repo, commit, path, expand))
                elif any(p.startswith(path + "/") for p in commit.files):
                    out.append(self.hub._dir_entry(repo, commit, path, expand))
        self._json(out)

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self.hub._resolve_revision(repo, revision)
            items = [
                {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                 "authors": [{"user": self.hub.username, "avatar": ""}], "parents": c.parents}
                for c in self.hub._history(repo, commit)
            ]
        self._json(items)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                        for b, oid in sorted(repo.branches.items()) if oid]
            tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(repo.tags.items())]
            pulls = [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": pull.head}
                     for n, pull in sorted(repo.pulls.items())] if self._truthy("include_prs") else []
        self._json({"branches": branches, "converts": [], "tags": tags, "pullRequests": pulls})

    def _branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        self._require_token()
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            if self.command == "DELETE":
                if branch not in repo.branches:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                del repo.branches[branch]
                return self._json({})
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            start = self._json_body().get("startingPoint")
            repo.branches[branch] = self.hub._resolve_revision(repo, start).oid
        self._json({})

    def _tag(self, repo_type: str, repo_id: str, arg: str) -> None:
        self._require_token()
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            if self.command == "DELETE":
                if arg not in repo.tags:
                    raise HubError(404, f"Invalid rev id: {arg}", "RevisionNotFound")
                del repo.tags[arg]
                return self._json({})
            tag = self._json_body().get("tag")
            if not tag:
                raise HubError(400, "Missing tag name")
            if tag in repo.tags:
                raise HubError(409, f"Reference already exists: refs/tags/{tag}")
            repo.tags[tag] = self.hub._resolve_revision(repo, arg).oid
        self._json({})

    def _create_pull(self, repo_type: str, repo_id: str) -> None:
        """create_pull_request: a pull request against main, its ref starting at main's tip."""
        self._require_token()
        payload = self._json_body()
        if not payload.get("pullRequest"):
            raise HubError(501, "FakeHub implements pull requests only, not plain discussions")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            head = self._branch_head(repo, "main")
            if head is None:
                raise HubError(400, "Cannot open a pull request on an empty repository")
            pull = self.hub._open_pull(repo, str(payload.get("title") or ""), str(payload.get("description") or ""),
                                       "main", head.oid)
        self._json({"num": pull.num, "pullRequest": True,
                    "url": f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{pull.num}"})

    def _pull_details(self, repo_type: str, repo_id: str, num: int) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            pull = repo.pulls.get(num)
            if pull is None:
                raise HubError(404, f"Discussion {num} not found")
            details = {"num": pull.num, "title": pull.title, "status": "open", "isPullRequest": True,
                       "createdAt": pull.created_at, "author": {"name": self.hub.username},
                       "repo": {"name": repo_id, "type": repo_type}, "events": [],
                       "changes": {"base": f"refs/heads/{pull.base}"}, "filesWithConflicts": []}
        self._json(details)

    # ---------------------------------------------------------------- uploads

    def _branch_head(self, repo: _Repo, revision: str) -> _Commit | None:
        """Commit at the tip of a writable branch or pull request ref (None for an empty branch)."""
        pull = self.hub._pull(repo, revision)
        if pull is not None:
            return repo.commits[pull.head]
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/"):]
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        oid = repo.branches[revision]
        return repo.commits[oid] if oid else None

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        payload = self._json_body()
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            try:
                head = self._branch_head(repo, revision)
            except HubError:  # not a branch: a tag or commit sha (the commit call itself will refuse it)
                head = self.hub._resolve_revision(repo, revision)
            files = head.files if head is not None else {}
            out = []
            for item in payload.get("files", []):
                path, size = item["path"], int(item.get("size", 0))
                sample = base64.b64decode(item.get("sample") or "")
                mode = "lfs" if self.hub.lfs_uploads and self.hub._needs_lfs(size, sample) else "regular"
                entry: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": False}
                existing = files.get(path)
                if existing is not None:
                    entry["oid"] = existing.sha256 if mode == "lfs" else existing.git_oid
                out.append(entry)
        self._json({"files": out, "commitOid": head.oid if head is not None else None})

    def _commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        self._require_token()
        create_pr = self._truthy("create_pr")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError:
            raise HubError(400, "Invalid ndjson commit payload")
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "First line of the commit payload must be the header")
        header = lines[0]["value"]
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            if _FULL_SHA.match(revision) or revision in repo.tags:
                raise HubError(400, f"Invalid rev id: {revision} (commits must target a branch)")
            head = self._branch_head(repo, revision)
            branch = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
            parent_commit = header.get("parentCommit")
            pull = None
            if create_pr:  # the pull request starts at parentCommit if given, else at the branch's tip
                if parent_commit:
                    head = self.hub._resolve_revision(repo, parent_commit)
                if head is None:
                    raise HubError(400, "Cannot open a pull request on an empty branch")
                pull = self.hub._open_pull(repo, header.get("summary") or "Commit", header.get("description") or "",
                                           branch, head.oid)
                branch = f"refs/pr/{pull.num}"
            elif parent_commit and (head is None or parent_commit != head.oid):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files) if head is not None else {}
            for op in lines[1:]:
                key, value = op.get("key"), op.get("value") or {}
                path = str(value.get("path", "")).strip("/")
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    files[path] = self.hub._make_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    oid = value["oid"]
                    data = repo.lfs_store.get(oid)
                    if data is None:  # server-side copy of an LFS file already in the repo
                        data = next((b.data for c in repo.commits.values() for b in c.files.values()
                                     if b.sha256 == oid), None)
                    if data is None:
                        raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file "
                                            f"that does not exist: {path} ({oid})")
                    files[path] = _Blob.make(data, is_lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    removed = [p for p in files if p.startswith(path + "/")] if path else list(files)
                    if not removed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in removed:
                        del files[p]
                else:
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            commit = self.hub._add_commit(repo, branch, files, header.get("summary") or "Commit",
                                          header.get("description") or "")
            url = f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
            pull_url = f"{self.hub.url}/{_URL_PREFIX[repo_type]}{repo_id}/discussions/{pull.num}" if pull else None
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                    "pullRequestUrl": pull_url})

    # ---------------------------------------------------------------- LFS (basic transfer)

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        self._require_token()
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "FakeHub only implements LFS uploads")
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            known = set(repo.lfs_store) | {b.sha256 for c in repo.commits.values() for b in c.files.values()}
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if oid not in known:
                href = f"{self.hub.url}/_lfs/{repo_type}/{repo_id}/{oid}"
                item["actions"] = {"upload": {"href": href, "header": {}},
                                   "verify": {"href": href + "/verify", "header": {}}}
            objects.append(item)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _route_lfs_storage(self, segs: list[str], method: str) -> None:
        # /_lfs/{repo_type}/{ns}/{name}/{oid}[/verify]
        if len(segs) not in (4, 5) or segs[0] not in _URL_PREFIX:
            raise HubError(404, "Not found")
        repo_type, oid = segs[0], segs[3]
        repo_id = f"{urllib.parse.unquote(segs[1])}/{urllib.parse.unquote(segs[2])}"
        with self.hub._lock:
            repo = self.hub._get_repo(repo_type, repo_id)
        if len(segs) == 4 and method == "PUT":
            if hashlib.sha256(self.body).hexdigest() != oid:
                raise HubError(400, f"LFS upload does not match its sha256 {oid}")
            with self.hub._lock:
                repo.lfs_store[oid] = self.body
            return self._send(200)
        if len(segs) == 5 and segs[4] == "verify" and method == "POST":
            payload = self._json_body()
            with self.hub._lock:
                data = repo.lfs_store.get(oid)
            if data is None or len(data) != int(payload.get("size", len(data))):
                raise HubError(404, f"LFS object {oid} not found")
            return self._json({})
        raise HubError(404, "Not found")

    # ---------------------------------------------------------------- downloads

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        with self.hub._lock:
            repo = self._repo(repo_type, repo_id)
            commit = self.hub._resolve_revision(repo, revision)
            blob = commit.files.get(filename)
            if blob is None:
                raise HubError(404, f"Entry not found: {filename}", "EntryNotFound",
                               headers={"X-Repo-Commit": commit.oid})
            data = repo.overrides.get((commit.oid, filename), blob.data)
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{urllib.parse.quote(filename.rsplit('/', 1)[-1])}",
        }
        if blob.is_lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
        status, body = 200, memoryview(data)
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            total = len(data)
            start = end = None
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
                else:
                    start, end = max(total - int(match.group(2)), 0), total - 1
            if start is None or start >= total or start > end:
                return self._send(416, headers={**headers, "Content-Range": f"bytes */{total}"})
            status, body = 206, body[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        self._responded = True
        self.send_response(status)
        headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(len(body))})
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            step = 1 << 20
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])


# --------------------------------------------------------------------------------------------------- client setup


@dataclasses.dataclass
class HubEnv:
    """What :func:`configure_hf_hub` set up. ``go_offline()``/``go_online()`` flip HF_HUB_OFFLINE in-process."""

    endpoint: str
    home: Path
    cache_dir: Path
    token: str
    monkeypatch: Any
    fake_hub: FakeHub | None = None

    def go_offline(self) -> None:
        """Like running with HF_HUB_OFFLINE=1 from here on: every client HTTP call raises OfflineModeIsEnabled."""
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def go_online(self) -> None:
        from huggingface_hub import constants

        self.monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def api(self):
        """A fresh ``HfApi`` bound to the fake endpoint and token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token)


def configure_hf_hub(
    monkeypatch: Any,
    endpoint: str,
    home: str | Path,
    *,
    token: str | None = DEFAULT_TOKEN,
    disable_xet: bool = True,
    offline: bool = False,
) -> HubEnv:
    """Point the in-process ``huggingface_hub`` (and subprocesses, via env vars) at ``endpoint``.

    ``home`` becomes HF_HOME with the cache in ``home/hub``. Uses ``monkeypatch`` (a ``pytest.MonkeyPatch``) for
    every change, so everything is restored on undo. ``disable_xet`` sets HF_HUB_DISABLE_XET (client never uses
    hf_xet: ``upload_folder`` makes one ``create_commit``); with ``disable_xet=False`` the client takes its Xet-era
    code paths (pipelined upload), which also work with this fake as long as it answers "regular" uploads.
    """
    import huggingface_hub.hf_api  # the package is lazy: import the submodules we patch explicitly
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    endpoint = endpoint.rstrip("/")
    home = Path(home)
    cache_dir = home / "hub"
    cache_dir.mkdir(parents=True, exist_ok=True)
    host = urllib.parse.urlsplit(endpoint).hostname or ""

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_XET": "1" if disable_xet else "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HUGGINGFACE_CO_STAGING", "TRANSFORMERS_OFFLINE",
                "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_OIDC_ID_TOKEN",
                "HF_HUB_ENABLE_HF_TRANSFER", "HF_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)

    def patch(obj: Any, name: str, value: Any) -> None:
        if hasattr(obj, name):
            monkeypatch.setattr(obj, name, value)

    patch(constants, "ENDPOINT", endpoint)
    patch(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    patch(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {host}))
    patch(constants, "HF_HOME", str(home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "default_cache_path"):
        patch(constants, name, str(cache_dir))
    for name in ("HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "default_assets_cache_path"):
        patch(constants, name, str(home / "assets"))
    for name in ("HF_XET_CACHE", "default_xet_cache_path"):
        patch(constants, name, str(home / "xet"))
    patch(constants, "HF_TOKEN_PATH", str(home / "token"))
    patch(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    patch(constants, "CHECK_FOR_UPDATE_DONE_PATH", str(home / ".check_for_update_done"))
    patch(constants, "CHECK_FOR_SKILL_UPDATE_DONE_PATH", str(home / ".check_for_skill_update_done"))
    patch(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    patch(constants, "HF_HUB_OFFLINE", offline)
    patch(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    patch(constants, "HF_HUB_DISABLE_UPDATE_CHECK", True)
    patch(constants, "HF_HUB_DISABLE_XET", disable_xet)
    patch(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)

    # Values copied from constants at import time by other modules.
    patch(huggingface_hub.hf_api.api, "endpoint", endpoint)  # singleton behind huggingface_hub.upload_folder & co
    if hasattr(_http, "_HUB_ORIGINS") and hasattr(_http, "_url_origin"):  # redirects allowed to keep auth
        patch(_http, "_HUB_ORIGINS", frozenset(_http._HUB_ORIGINS | {_http._url_origin(endpoint)}))
    try:
        from huggingface_hub.utils import _cache_manager, _detect_agent

        patch(_cache_manager, "HF_HUB_CACHE", str(cache_dir))
        # No `GET /api/agent-harnesses` + cache file on the first request of the process.
        patch(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    except ImportError:  # pragma: no cover - other client versions
        pass
    try:
        from huggingface_hub.utils import _cache_assets

        patch(_cache_assets, "HF_ASSETS_CACHE", str(home / "assets"))
    except ImportError:  # pragma: no cover
        pass
    return HubEnv(endpoint=endpoint, home=home, cache_dir=cache_dir, token=token or "", monkeypatch=monkeypatch)


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_hub():
    """A running :class:`FakeHub` (fresh and empty for each test). Fails the test if the fake itself crashed."""
    with FakeHub() as hub:
        yield hub
    if hub.errors:
        pytest.fail("FakeHub internal errors:\n" + "\n".join(hub.errors), pytrace=False)


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch) -> HubEnv:
    """huggingface_hub pointed at ``fake_hub``: empty cache/HF_HOME in ``tmp_path/hf_home``, token "hf_test",
    Xet disabled in the client, online. ``hub_env.go_offline()`` switches to HF_HUB_OFFLINE=1 for the rest of the
    test; ``hub_env.fake_hub`` is the server; ``hub_env.api()`` a bound ``HfApi``."""
    env = configure_hf_hub(monkeypatch, fake_hub.url, tmp_path / "hf_home")
    env.fake_hub = fake_hub
    return env
