"""Hub transport against the loopback fake Hub: push, fetch what a load needs, revisions, offline,
huggingface_hub's options, failures, and packages that must not load."""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse

import numpy as np
import pytest

from conftest import synthetic_slice
from fake_hub import fake_hub, hub_env  # noqa: F401  (fixtures)
from lung_classifier import HubError, LungClassifier, PackageError, package
from lung_classifier.package import hub

REPO = "fake-user/lung-tiny"
SHA = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def local(tiny_package) -> LungClassifier:
    """The package as trained, its own SavedModel trusted (the test wrote it)."""
    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_slice(label, 12)) for label in ("Normal", "Benign", "Malignant")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Rebuilt packages go to this test's own cache."""
    monkeypatch.setenv("LUNG_CLASSIFIER_CACHE", str(tmp_path / "lung-cache"))
    return tmp_path / "lung-cache"


def predictions(classifier: LungClassifier, images) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in classifier.predict_batch(images)])


def downloaded(hub_env, since: int = 0) -> list[str]:
    """Files fetched (GET of /resolve/) from the fake Hub, after the first `since` requests."""
    files = []
    for method, path in hub_env.fake_hub.requests[since:]:
        _, found, rest = urllib.parse.unquote(path.partition("?")[0]).partition("/resolve/")
        if method == "GET" and found:
            files.append(rest.split("/", 1)[1])
    return files


def test_parse_repo_id():
    assert hub.parse_repo_id("owner/name") == "owner/name"
    assert hub.parse_repo_id("hf://owner/my.model-v2") == "owner/my.model-v2"
    for bad in ("name", "owner/name/extra", "hf://", "/abs/path", "not a repo id!!", "owner/"):
        assert hub.parse_repo_id(bad) is None, bad


def test_push_then_load_by_repo_id_rebuilds_from_the_head(hub_env, local, images, own_cache, tiny_standard_backbone):
    commit = local.push_to_hub(REPO).oid
    assert SHA.match(commit)
    assert hub_env.fake_hub.resolve(REPO) == commit
    assert set(local.config["files"]) | set(local.config["saved_model_files"]) | {"config.json"} <= set(
        hub_env.fake_hub.list_files(REPO))
    assert hub_env.fake_hub.get_file(REPO, "head.npz") == (local.directory / "head.npz").read_bytes()

    expected = predictions(local, images)
    for source in (REPO, f"hf://{REPO}"):
        start = len(hub_env.fake_hub.requests)
        remote = LungClassifier.from_pretrained(source, precision="float32")  # the same network, to 1e-6
        assert f"Hugging Face Hub repo {REPO}" in remote.origin
        assert remote.source_name == f"Hub repo {REPO}"
        assert remote.labels == local.labels
        np.testing.assert_allclose(predictions(remote, images), expected, atol=1e-6)
        # Rebuilt in our cache from the files the load needs; the SavedModel was never downloaded.
        assert remote.directory.parent == own_cache / "packages"
        assert not [name for name in downloaded(hub_env, start) if name.startswith("saved_model/")]
    assert sorted(downloaded(hub_env)) == sorted(["config.json", *local.config["files"]])  # once each


def test_a_trusted_saved_model_is_downloaded_and_loaded_as_it_is(hub_env, local, images):
    local.push_to_hub(REPO)
    remote = LungClassifier.from_pretrained(REPO, trust_saved_model=True)
    assert remote.config == local.config
    np.testing.assert_array_equal(predictions(remote, images), predictions(local, images))
    assert str(hub_env.cache_dir) in str(remote.directory)  # loaded in place from the standard Hub cache
    assert set(local.config["saved_model_files"]) <= set(downloaded(hub_env))


def test_pinned_revision_fetches_the_first_commit(hub_env, local, tmp_path, tiny_standard_backbone):
    first = local.push_to_hub(REPO).oid

    edited = tmp_path / "edited"
    shutil.copytree(local.directory, edited)
    card = edited / "README.md"
    card.write_text(card.read_text() + "\n## Changelog\n\n- second upload\n")
    config = json.loads((edited / package.CONFIG).read_text())
    package.write_config(edited, config)
    second = hub.upload(edited, REPO, commit_message="second").oid
    assert SHA.match(second) and second != first

    latest = LungClassifier.from_pretrained(REPO)
    assert "second upload" in (latest.directory / "README.md").read_text()
    pinned = LungClassifier.from_pretrained(REPO, revision=first)
    assert "second upload" not in (pinned.directory / "README.md").read_text()
    assert pinned.config["files"]["README.md"] == local.config["files"]["README.md"]
    assert pinned.origin.endswith(f"{REPO}@{first}")
    assert pinned.source_name == f"Hub repo {REPO}@{first}"
    assert pinned.directory != latest.directory


def test_offline_refetch_uses_the_cache(hub_env, local, images, tiny_standard_backbone):
    first = local.push_to_hub(REPO).oid
    online = LungClassifier.from_pretrained(REPO)
    expected = predictions(online, images)

    hub_env.go_offline()
    hub_env.fake_hub.stop()  # unreachable as well, to be sure nothing is asked of it
    offline = LungClassifier.from_pretrained(REPO)
    assert offline.directory == online.directory
    np.testing.assert_array_equal(predictions(offline, images), expected)
    assert LungClassifier.from_pretrained(REPO, revision=first).directory == online.directory
    # The SavedModel was never fetched, so trusting it offline has nothing to load.
    with pytest.raises(HubError, match=r"cached copy lacks files this load needs.*saved_model/"):
        LungClassifier.from_pretrained(REPO, trust_saved_model=True)


def test_local_files_only_and_cache_dir_are_forwarded(hub_env, local, tmp_path, tiny_standard_backbone):
    local.push_to_hub(REPO)
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(HubError, match="local_files_only=True"):
        LungClassifier.from_pretrained(REPO, local_files_only=True, cache_dir=elsewhere)
    assert not downloaded(hub_env)

    online = LungClassifier.from_pretrained(REPO, cache_dir=elsewhere)
    assert (elsewhere / "models--fake-user--lung-tiny").is_dir()
    assert not (hub_env.cache_dir / "models--fake-user--lung-tiny").exists()
    count = len(hub_env.fake_hub.requests)
    again = LungClassifier.from_pretrained(REPO, cache_dir=elsewhere, local_files_only=True)  # still online
    assert len(hub_env.fake_hub.requests) == count  # nothing asked of the server
    assert again.directory == online.directory


def test_force_download_fetches_again(hub_env, local, tiny_standard_backbone):
    local.push_to_hub(REPO)
    LungClassifier.from_pretrained(REPO)
    start = len(hub_env.fake_hub.requests)
    LungClassifier.from_pretrained(REPO)
    assert downloaded(hub_env, start) == []
    LungClassifier.from_pretrained(REPO, force_download=True)
    assert sorted(downloaded(hub_env, start)) == sorted(["config.json", *local.config["files"]])


def test_token_is_forwarded_for_a_private_repo(hub_env, local, monkeypatch, tiny_standard_backbone):
    local.push_to_hub(REPO, private=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubError, match="not found \\(or private: .*token="):
        LungClassifier.from_pretrained(REPO)
    start = len(hub_env.fake_hub.requests)
    remote = LungClassifier.from_pretrained(REPO, token="hf_given_token")
    assert remote.labels == local.labels
    assert set(hub_env.fake_hub.authorizations[start:]) == {"Bearer hf_given_token"}


def test_missing_repo_is_a_hub_error_naming_it(hub_env):
    with pytest.raises(HubError, match=r"'fake-user/no-such-model' not found"):
        LungClassifier.from_pretrained("fake-user/no-such-model")


def test_missing_revision_is_a_hub_error(hub_env, local):
    local.push_to_hub(REPO)
    with pytest.raises(HubError, match="has no revision 'v9'"):
        LungClassifier.from_pretrained(REPO, revision="v9")


def test_offline_with_an_empty_cache_says_so(hub_env, local):
    local.push_to_hub(REPO)
    hub_env.go_offline()
    with pytest.raises(HubError, match=r"HF_HUB_OFFLINE.*cache") as raised:
        LungClassifier.from_pretrained(REPO)
    assert REPO in str(raised.value)


def test_a_repo_without_config_is_not_a_package(hub_env):
    hub_env.fake_hub.commit(REPO, {"model.safetensors": b"\0weights"})
    with pytest.raises(PackageError, match="is not a model package"):
        LungClassifier.from_pretrained(REPO)


def test_file_tampered_on_the_server_fails_its_checksum(hub_env, local):
    local.push_to_hub(REPO)
    # Same length, one byte changed: the Hub client only checks the size, the package checks sha256.
    hub_env.fake_hub.tamper(REPO, "head.npz", lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(PackageError, match=r"head\.npz fails its sha256 checksum"):
        LungClassifier.from_pretrained(REPO)


def test_tampered_saved_model_on_the_server_is_named_when_trusted_and_never_fetched_otherwise(
        hub_env, local, tiny_standard_backbone):
    local.push_to_hub(REPO)
    name = "saved_model/saved_model.pb"
    hub_env.fake_hub.tamper(REPO, name, lambda data: data[:-1] + bytes([data[-1] ^ 0x01]))
    assert LungClassifier.from_pretrained(REPO).labels == local.labels
    with pytest.raises(PackageError, match=re.escape(name)):
        LungClassifier.from_pretrained(REPO, trust_saved_model=True)


def edited_config(local: LungClassifier, **changes) -> bytes:
    config = dict(local.config)
    for key, value in changes.items():
        config[key] = value(config[key]) if callable(value) else value
    return json.dumps(config).encode()


@pytest.mark.parametrize("name", ["../../outside.txt", "/etc/hostname", "plots/../../../x"])
def test_a_listed_name_that_leaves_the_package_stops_the_download(hub_env, local, name):
    local.push_to_hub(REPO)
    hub_env.fake_hub.commit(REPO, {"config.json": edited_config(local, files=lambda f: {**f, name: "0" * 64})})
    start = len(hub_env.fake_hub.requests)
    with pytest.raises(PackageError, match="is not an allowed package file name"):
        LungClassifier.from_pretrained(REPO)
    assert downloaded(hub_env, start) == ["config.json"]


def test_unlisted_files_in_a_repo_are_never_downloaded_and_refused_in_the_snapshot(
        hub_env, local, tiny_standard_backbone):
    local.push_to_hub(REPO)
    hub_env.fake_hub.commit(REPO, {"extra.py": "import os\n", "saved_model/assets/extra.txt": "x"})
    remote = LungClassifier.from_pretrained(REPO, trust_saved_model=True)
    assert not {"extra.py", "saved_model/assets/extra.txt"} & set(downloaded(hub_env))
    assert not (remote.directory / "extra.py").exists()

    # A snapshot that holds them anyway (another tool fetched the whole repo) is refused, naming them;
    # the Hub's own .gitattributes is not part of any package and is let be.
    from huggingface_hub import snapshot_download

    snapshot_download(REPO)
    assert (remote.directory / ".gitattributes").is_file()
    with pytest.raises(PackageError, match=r"not listed in config\.json: extra\.py, saved_model/assets/extra\.txt"):
        LungClassifier.from_pretrained(REPO, trust_saved_model=True)


def test_a_package_name_that_climbs_out_stays_in_the_cache(hub_env, local, own_cache, tiny_standard_backbone):
    local.push_to_hub(REPO)
    hub_env.fake_hub.commit(REPO, {"config.json": edited_config(local, name="../../x")})
    remote = LungClassifier.from_pretrained(REPO)
    assert remote.directory.parent == own_cache / "packages" and remote.directory.name.startswith("x-")
    assert [p.name for p in own_cache.iterdir()] == ["packages"]


@pytest.fixture
def edited(local, tmp_path) -> LungClassifier:
    """The package with one more line in its card (checksums updated): something new to push."""
    directory = tmp_path / "edited"
    shutil.copytree(local.directory, directory)
    card = directory / "README.md"
    card.write_text(card.read_text() + "\n## Changelog\n\n- second upload\n")
    package.write_config(directory, json.loads((directory / package.CONFIG).read_text()))
    return LungClassifier.from_pretrained(directory, trust_saved_model=True)


def test_push_to_a_branch_leaves_main_alone(hub_env, local, edited):
    """branch= as in ModelHubMixin.push_to_hub: created from main when new, committed to, main untouched."""
    main = local.push_to_hub(REPO).oid
    pushed = edited.push_to_hub(REPO, branch="candidate", commit_message="candidate head")
    assert SHA.match(pushed.oid) and pushed.oid != main and pushed.pr_url is None
    assert hub_env.fake_hub.resolve(REPO) == main
    assert hub_env.fake_hub.resolve(REPO, "candidate") == pushed.oid
    assert [c.commit_id for c in hub_env.api().list_repo_commits(REPO, revision="candidate")][:2] == [pushed.oid, main]
    assert hub_env.fake_hub.get_file(REPO, "README.md", revision="candidate") == \
        (edited.directory / "README.md").read_bytes() != hub_env.fake_hub.get_file(REPO, "README.md")
    # The branch exists now: pushing to it again is a commit on it (here an empty one, so none).
    assert edited.push_to_hub(REPO, branch="candidate").oid == pushed.oid
    remote = LungClassifier.from_pretrained(REPO, revision="candidate", trust_saved_model=True)
    assert remote.config == edited.config and remote.origin.endswith(f"{REPO}@candidate")


def test_push_as_a_pull_request_then_load_it_by_its_ref(hub_env, local, edited):
    """create_pr=True opens a pull request against main: main stays, the PR's ref loads."""
    main = local.push_to_hub(REPO).oid
    pushed = edited.push_to_hub(REPO, create_pr=True, commit_message="proposed package")
    assert pushed.pr_num == 1 and pushed.pr_revision == "refs/pr/1" and pushed.pr_url.endswith("/discussions/1")
    assert hub_env.fake_hub.resolve(REPO) == main
    assert hub_env.fake_hub.resolve(REPO, "refs/pr/1") == pushed.oid
    assert hub_env.api().get_discussion_details(REPO, 1).title == "proposed package"
    remote = LungClassifier.from_pretrained(REPO, revision=pushed.pr_revision, trust_saved_model=True)
    assert remote.config == edited.config
    # branch= also takes a pull request's ref, to add a commit to it (it is not a branch to create).
    more = local.push_to_hub(REPO, branch=pushed.pr_revision, commit_message="back to the first card")
    assert hub_env.fake_hub.resolve(REPO, "refs/pr/1") == more.oid != pushed.oid
    assert [ref.name for ref in hub_env.api().list_repo_refs(REPO).branches] == ["main"]


def test_branch_and_create_pr_together_are_refused_before_anything_is_sent(hub_env, local):
    with pytest.raises(ValueError, match="pass branch='dev' or create_pr=True, not both"):
        local.push_to_hub(REPO, branch="dev", create_pr=True)
    assert hub_env.fake_hub.requests == []


def test_push_to_a_missing_pull_request_is_a_hub_error_naming_it(hub_env, local):
    local.push_to_hub(REPO)
    with pytest.raises(HubError, match=f"uploading to Hub repo '{REPO}@refs/pr/7' failed"):
        local.push_to_hub(REPO, branch="refs/pr/7")


def test_upload_without_a_token_is_a_hub_error(hub_env, local, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubError, match=f"uploading to Hub repo '{REPO}' failed"):
        local.push_to_hub(REPO)


def test_training_pushes_its_package(hub_env, synthetic_dataset, cache_root, tmp_path, monkeypatch, capsys,
                                     images, tiny_package, tiny_standard_backbone):
    """`python -m training ... --push-to-hub` (one CV repeat, to keep it short)."""
    from conftest import TINY_SIZE, tiny_backbone
    from training.__main__ import parse_args, train

    output = tmp_path / "pushed"
    repo = "fake-user/trained"
    args = parse_args(["--data", str(synthetic_dataset), "--output", str(output), "--input-size", str(TINY_SIZE),
                       "--name", "pushed-test", "--repeats", "1", "--push-to-hub", repo])
    assert train(args, tiny_backbone(), digest="tiny-backbone-seed-0") == 0
    printed = capsys.readouterr().out
    commit = re.search(rf"pushed to {repo} at commit ([0-9a-f]{{40}})", printed)
    assert commit, printed[-2000:]

    remote = LungClassifier.from_pretrained(repo, revision=commit.group(1), precision="float32")
    np.testing.assert_allclose(predictions(remote, images),
                               predictions(LungClassifier.from_pretrained(output, trust_saved_model=True), images),
                               atol=1e-6)
    # The card on the Hub tells readers the repo's own id.
    assert f'from_pretrained("{repo}")' in (remote.directory / "README.md").read_text()
