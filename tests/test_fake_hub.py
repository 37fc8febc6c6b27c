"""The real huggingface_hub client against tests/fake_hub.py (no network needed)."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # tests/ on sys.path (rootdir-style, no tests/__init__.py)
    from fake_hub import FakeHub, configure_hf_hub, fake_hub, hub_env  # noqa: F401 (fixtures)
except ImportError:  # tests is a package
    from tests.fake_hub import FakeHub, configure_hf_hub, fake_hub, hub_env  # noqa: F401 (fixtures)

REPO = "fake-user/lung-model"
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
VARIABLES = "saved_model/variables/variables.data-00000-of-00001"


def _png(width: int = 4, height: int = 4) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + bytes([y * 40 % 256, 90, 128]) * width for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _binary(size: int) -> bytes:
    """Random bytes that look binary to the Hub (a NUL byte early on), like real weights files."""
    return b"\0\0\0\x01" + os.urandom(size - 4)


def _make_folder(root: Path, big_size: int = 20 * 1024 * 1024) -> dict[str, bytes]:
    files = {
        "config.json": b'{"image_size": 224, "classes": ["normal", "pneumonia"]}\n',
        "README.md": b"---\nlicense: mit\ntags: [image-classification]\n---\n# Lung model\n",
        "examples/sample.png": _png(),
        "weights.bin": _binary(big_size),
        "saved_model/saved_model.pb": b"\x08\x01\x12\x00" + os.urandom(2048),
        "saved_model/fingerprint.pb": _binary(64),
        VARIABLES: _binary(3 * 1024 * 1024),
        "saved_model/variables/variables.index": _binary(1024),
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _read_tree(root: str | Path) -> dict[str, bytes]:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _create_and_upload(folder: Path, big_size: int) -> tuple[dict[str, bytes], str]:
    files = _make_folder(folder, big_size)
    api = HfApi()
    api.create_repo(REPO, repo_type="model", exist_ok=True)
    api.create_repo(REPO, repo_type="model", exist_ok=True)  # exist_ok -> 409 swallowed
    info = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="Upload model v1")
    return files, info.oid


@pytest.fixture
def uploaded(hub_env, tmp_path):
    """REPO created and uploaded through the client (2 MB weights, to keep tests fast); (files, commit sha)."""
    return _create_and_upload(tmp_path / "model", big_size=2 * 1024 * 1024)


def test_upload_then_snapshot_download(hub_env, tmp_path):
    files, sha = _create_and_upload(tmp_path / "model", big_size=20 * 1024 * 1024)
    assert SHA_RE.match(sha)
    assert hub_env.fake_hub.resolve(REPO) == sha

    path = snapshot_download(REPO)
    assert Path(path).name == sha
    assert Path(path).is_relative_to(hub_env.cache_dir)
    got = _read_tree(path)
    assert got.pop(".gitattributes")  # the Hub's initial commit
    assert got == files

    # Pinned revision, nested file, single-file download.
    local = hf_hub_download(REPO, VARIABLES, revision=sha)
    assert Path(local).read_bytes() == files[VARIABLES]

    # Metadata as the client sees it: binaries/large files are LFS with their sha256.
    info = HfApi().model_info(REPO, files_metadata=True)
    assert info.sha == sha
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["weights.bin"].lfs.sha256 == hashlib.sha256(files["weights.bin"]).hexdigest()
    assert siblings["weights.bin"].size == len(files["weights.bin"])
    assert siblings["examples/sample.png"].lfs is not None  # binary
    assert siblings[VARIABLES].lfs.sha256 == hashlib.sha256(files[VARIABLES]).hexdigest()
    assert siblings["config.json"].lfs is None
    assert siblings["config.json"].blob_id == hashlib.sha1(
        b"blob %d\0" % len(files["config.json"]) + files["config.json"]).hexdigest()

    # The fake never made the client talk Xet.
    assert not [p for _, p in hub_env.fake_hub.requests if "xet" in p]


def test_module_level_functions_and_refs(hub_env, tmp_path):
    import huggingface_hub

    url = huggingface_hub.create_repo("fake-user/other", exist_ok=True)
    assert url.repo_id == "fake-user/other" and url.startswith(hub_env.endpoint)
    info = huggingface_hub.upload_file(path_or_fileobj=b"hello", path_in_repo="a/b.txt",
                                       repo_id="fake-user/other", commit_message="add")
    assert huggingface_hub.file_exists("fake-user/other", "a/b.txt")
    assert not huggingface_hub.file_exists("fake-user/other", "nope.txt")
    assert huggingface_hub.repo_exists("fake-user/other")
    assert not huggingface_hub.repo_exists("fake-user/missing")
    api = hub_env.api()
    api.create_tag("fake-user/other", tag="v1")
    assert [t.target_commit for t in api.list_repo_refs("fake-user/other").tags] == [info.oid]
    assert [c.title for c in api.list_repo_commits("fake-user/other")] == ["add", "initial commit"]
    tree = {e.path for e in api.list_repo_tree("fake-user/other", recursive=True)}
    assert tree == {".gitattributes", "a", "a/b.txt"}
    assert Path(hf_hub_download("fake-user/other", "a/b.txt", revision="v1")).read_bytes() == b"hello"


def test_older_commit_stays_downloadable(hub_env, uploaded, tmp_path):
    files, sha1 = uploaded
    api = HfApi()
    info = api.upload_file(path_or_fileobj=b'{"image_size": 256}\n', path_in_repo="config.json", repo_id=REPO,
                           commit_message="Bump image size")
    sha2 = info.oid
    assert SHA_RE.match(sha2) and sha2 != sha1

    old = _read_tree(snapshot_download(REPO, revision=sha1))
    assert old["config.json"] == files["config.json"]
    new = _read_tree(snapshot_download(REPO))
    assert new["config.json"] == b'{"image_size": 256}\n'
    assert new["weights.bin"] == files["weights.bin"]
    assert _read_tree(snapshot_download(REPO, revision="main")) == new
    assert Path(hf_hub_download(REPO, "config.json", revision=sha1)).read_bytes() == files["config.json"]
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b'{"image_size": 256}\n'

    # Re-uploading unchanged content makes no new commit (client compares the preupload oids).
    folder = tmp_path / "model"
    (folder / "config.json").write_bytes(b'{"image_size": 256}\n')
    assert api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="noop").oid == sha2


def test_offline_second_download_uses_cache(hub_env, uploaded):
    files, sha = uploaded
    online = snapshot_download(REPO)
    hf_hub_download(REPO, "config.json")
    n_requests = len(hub_env.fake_hub.requests)

    hub_env.go_offline()
    assert snapshot_download(REPO) == online
    assert snapshot_download(REPO, revision=sha) == online
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == files["config.json"]
    assert len(hub_env.fake_hub.requests) == n_requests  # nothing reached the server
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("fake-user/never-downloaded")

    hub_env.go_online()
    assert snapshot_download(REPO) == online


def test_missing_repo_revision_and_file(hub_env, uploaded):
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("fake-user/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("fake-user/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("fake-user/does-not-exist")

    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "no/such/file.txt")


def test_tampered_file_is_served_silently(hub_env, uploaded):
    files, sha = uploaded
    hub = hub_env.fake_hub
    flip_last_byte = lambda b: b[:-1] + bytes([b[-1] ^ 0xFF])  # noqa: E731 (same length)
    hub.tamper(REPO, "weights.bin", flip_last_byte)  # LFS file
    hub.tamper(REPO, "config.json", b'{"image_size": 666, "classes": ["normal", "pneumonia"]}')  # regular
    assert hub.resolve(REPO) == sha  # advertised commit unchanged

    path = snapshot_download(REPO)
    assert Path(path).name == sha
    got = _read_tree(path)
    assert got["weights.bin"] != files["weights.bin"]
    assert len(got["weights.bin"]) == len(files["weights.bin"])
    assert got["config.json"] != files["config.json"]
    assert got[VARIABLES] == files[VARIABLES]

    # The metadata still describes the original bytes: that's what a checksum verification compares against.
    info = HfApi().model_info(REPO, files_metadata=True)
    expected = {s.rfilename: s.lfs.sha256 for s in info.siblings if s.lfs}["weights.bin"]
    assert hashlib.sha256(got["weights.bin"]).hexdigest() != expected
    report = HfApi().verify_repo_checksums(REPO)
    assert sorted(m["path"] for m in report.mismatches) == ["config.json", "weights.bin"]


def test_tampered_lfs_file_with_other_size_fails_client_size_check(hub_env, uploaded):
    hub_env.fake_hub.tamper(REPO, "weights.bin", b"short")
    with pytest.raises(OSError, match="Consistency check failed"):
        hf_hub_download(REPO, "weights.bin")


def test_xet_enabled_client_still_works(fake_hub, tmp_path, monkeypatch):
    """With hf_xet active in the client, upload_folder takes the pipelined path; the fake keeps it off Xet."""
    configure_hf_hub(monkeypatch, fake_hub.url, tmp_path / "home", disable_xet=False)
    folder = tmp_path / "model"
    files = _make_folder(folder, big_size=2 * 1024 * 1024)
    HfApi().create_repo(REPO)
    sha = HfApi().upload_folder(folder_path=folder, repo_id=REPO, commit_message="v1").oid
    got = _read_tree(snapshot_download(REPO, revision=sha))
    got.pop(".gitattributes")
    assert got == files
    assert not [p for _, p in fake_hub.requests if "xet" in p]


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")  # huggingface_hub's own LFS PUT
def test_basic_lfs_upload_mode(tmp_path, monkeypatch):
    with FakeHub(lfs_uploads=True) as hub:
        configure_hf_hub(monkeypatch, hub.url, tmp_path / "home")  # Xet disabled in the client
        folder = tmp_path / "model"
        files = _make_folder(folder, big_size=2 * 1024 * 1024)
        HfApi().create_repo(REPO)
        sha = HfApi().upload_folder(folder_path=folder, repo_id=REPO, commit_message="v1").oid
        puts = [p for m, p in hub.requests if m == "PUT"]
        assert any(p.endswith(hashlib.sha256(files["weights.bin"]).hexdigest()) for p in puts)
        assert not any("config.json" in p for p in puts)
        got = _read_tree(snapshot_download(REPO, revision=sha))
        got.pop(".gitattributes")
        assert got == files
        assert not hub.errors


def test_server_side_seeding_and_range(fake_hub):
    import httpx2

    sha = fake_hub.commit("org/data", {"a.txt": "0123456789"}, repo_type="dataset")
    url = f"{fake_hub.url}/datasets/org/data/resolve/{sha}/a.txt"
    r = httpx2.get(url, headers={"Range": "bytes=2-4"})
    assert r.status_code == 206 and r.content == b"234" and r.headers["Content-Range"] == "bytes 2-4/10"
    head = httpx2.head(url)
    assert head.headers["X-Repo-Commit"] == sha and head.headers["Content-Length"] == "10"
    missing = httpx2.head(f"{fake_hub.url}/nobody/nothing/resolve/main/a.txt")
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"


def _pushed_to_a_branch_and_a_pull_request(api: HfApi, folder: Path) -> tuple[str, str, object]:
    """v1 on main, v2 on a new branch "dev", v3 in a pull request; (main sha, dev sha, the PR's CommitInfo)."""
    api.create_repo(REPO)
    main = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="v1").oid
    api.create_branch(REPO, branch="dev", exist_ok=True)
    api.create_branch(REPO, branch="dev", exist_ok=True)  # 409 swallowed
    (folder / "config.json").write_bytes(b'{"v": 2}\n')
    dev = api.upload_folder(folder_path=folder, repo_id=REPO, revision="dev", commit_message="v2").oid
    (folder / "config.json").write_bytes(b'{"v": 3}\n')
    return main, dev, api.upload_folder(folder_path=folder, repo_id=REPO, create_pr=True, commit_message="v3")


@pytest.mark.parametrize("xet", [False, True], ids=["create_commit", "pipelined-upload"])
def test_branch_and_pull_request_uploads(fake_hub, tmp_path, monkeypatch, xet):
    """Without hf_xet the client commits with ?create_pr=1; with it, it opens the PR itself and commits to its ref."""
    configure_hf_hub(monkeypatch, fake_hub.url, tmp_path / "home", disable_xet=not xet)
    folder = tmp_path / "model"
    _make_folder(folder, big_size=64 * 1024)
    api = HfApi()
    main, dev, pr = _pushed_to_a_branch_and_a_pull_request(api, folder)
    posts = [path for method, path in fake_hub.requests if method == "POST"]
    opened_by_client = [path for path in posts if path.endswith(f"/{REPO}/discussions")]
    committed_with_flag = [path for path in posts if "/commit/" in path and "create_pr=1" in path]
    assert (len(opened_by_client), len(committed_with_flag)) == ((1, 0) if xet else (0, 1))

    assert fake_hub.resolve(REPO) == main  # neither the branch nor the PR touched main
    assert fake_hub.resolve(REPO, "dev") == dev != main
    assert [c.title for c in api.list_repo_commits(REPO, revision="dev")] == ["v2", "v1", "initial commit"]
    assert pr.pr_num == 1 and pr.pr_revision == "refs/pr/1" and pr.pr_url.endswith(f"/{REPO}/discussions/1")
    assert fake_hub.resolve(REPO, "refs/pr/1") == pr.oid
    assert api.list_repo_commits(REPO, revision="refs/pr/1")[1].commit_id == main  # the PR starts at main
    assert Path(hf_hub_download(REPO, "config.json", revision="refs/pr/1")).read_bytes() == b'{"v": 3}\n'
    assert Path(hf_hub_download(REPO, "config.json", revision="dev")).read_bytes() == b'{"v": 2}\n'
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", pr.oid)]
    assert sorted(r.name for r in refs.branches) == ["dev", "main"]
    details = api.get_discussion_details(REPO, 1)
    assert details.is_pull_request and details.target_branch == "refs/heads/main" and details.git_reference == \
        "refs/pr/1"
    # A second PR gets the next number; a missing PR ref is a missing revision.
    (folder / "config.json").write_bytes(b'{"v": 4}\n')
    assert api.upload_folder(folder_path=folder, repo_id=REPO, create_pr=True).pr_num == 2
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="refs/pr/9")
    assert not [p for _, p in fake_hub.requests if "xet" in p]
