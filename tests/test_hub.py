"""Hub transport against the loopback fake Hub: push, fetch by id and revision, offline, failures."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from conftest import synthetic_slice
from fake_hub import fake_hub, hub_env  # noqa: F401  (fixtures)
from lung_classifier import HubError, LungClassifier, PackageError, hub, package

REPO = "fake-user/lung-tiny"
SHA = re.compile(r"^[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def local(tiny_package) -> LungClassifier:
    return LungClassifier.from_pretrained(tiny_package)


@pytest.fixture(scope="module")
def images():
    return [np.asarray(synthetic_slice(label, 12)) for label in ("Normal", "Benign", "Malignant")]


def predictions(classifier: LungClassifier, images) -> np.ndarray:
    return np.array([list(p.values()) for p in classifier.predict_batch(images)])


def test_parse_repo_id():
    assert hub.parse_repo_id("owner/name") == "owner/name"
    assert hub.parse_repo_id("hf://owner/my.model-v2") == "owner/my.model-v2"
    for bad in ("name", "owner/name/extra", "hf://", "/abs/path", "not a repo id!!", "owner/"):
        assert hub.parse_repo_id(bad) is None, bad


def test_push_then_load_by_repo_id(hub_env, local, images):
    commit = local.push_to_hub(REPO)
    assert SHA.match(commit)
    assert hub_env.fake_hub.resolve(REPO) == commit
    assert set(local.config["files"]) | set(local.config["saved_model_files"]) | {"config.json"} <= set(
        hub_env.fake_hub.list_files(REPO))
    assert hub_env.fake_hub.get_file(REPO, "head.npz") == (local.directory / "head.npz").read_bytes()

    expected = predictions(local, images)
    for source in (REPO, f"hf://{REPO}"):
        remote = LungClassifier.from_pretrained(source)
        assert f"Hugging Face Hub repo {REPO}" in remote.origin
        assert remote.labels == local.labels
        assert remote.config == local.config
        np.testing.assert_array_equal(predictions(remote, images), expected)
        # Loaded from the standard Hub cache, not from the local package.
        assert str(hub_env.cache_dir) in str(remote.directory)


def test_pinned_revision_fetches_the_first_commit(hub_env, local, tmp_path):
    first = local.push_to_hub(REPO)

    edited = tmp_path / "edited"
    shutil.copytree(local.directory, edited)
    card = edited / "README.md"
    card.write_text(card.read_text() + "\n## Changelog\n\n- second upload\n")
    config = json.loads((edited / package.CONFIG).read_text())
    package.write_config(edited, config)
    second = hub.upload(edited, REPO, commit_message="second")
    assert SHA.match(second) and second != first

    latest = LungClassifier.from_pretrained(REPO)
    assert "second upload" in (latest.directory / "README.md").read_text()
    pinned = LungClassifier.from_pretrained(REPO, revision=first)
    assert "second upload" not in (pinned.directory / "README.md").read_text()
    assert pinned.config["files"]["README.md"] == local.config["files"]["README.md"]
    assert pinned.origin.endswith(f"{REPO}@{first}")
    assert pinned.directory != latest.directory


def test_offline_refetch_uses_the_cache(hub_env, local, images):
    first = local.push_to_hub(REPO)
    online = LungClassifier.from_pretrained(REPO)
    expected = predictions(online, images)

    hub_env.go_offline()
    hub_env.fake_hub.stop()  # unreachable as well, to be sure nothing is asked of it
    offline = LungClassifier.from_pretrained(REPO)
    assert offline.directory == online.directory
    np.testing.assert_array_equal(predictions(offline, images), expected)
    assert LungClassifier.from_pretrained(REPO, revision=first).directory == online.directory


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


def test_file_tampered_on_the_server_fails_its_checksum(hub_env, local):
    local.push_to_hub(REPO)
    # Same length, one byte changed: the Hub client only checks the size, the package checks sha256.
    hub_env.fake_hub.tamper(REPO, "head.npz", lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    with pytest.raises(PackageError, match=r"head\.npz fails its sha256 checksum"):
        LungClassifier.from_pretrained(REPO)


def test_tampered_saved_model_on_the_server_is_named(hub_env, local):
    local.push_to_hub(REPO)
    name = "saved_model/saved_model.pb"
    hub_env.fake_hub.tamper(REPO, name, lambda data: data[:-1] + bytes([data[-1] ^ 0x01]))
    with pytest.raises(PackageError, match=re.escape(name)):
        LungClassifier.from_pretrained(REPO)


def test_upload_without_a_token_is_a_hub_error(hub_env, local, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(HubError, match=f"uploading to Hub repo '{REPO}' failed"):
        local.push_to_hub(REPO)


def test_training_pushes_its_package(hub_env, synthetic_dataset, cache_root, tmp_path, monkeypatch, capsys,
                                     images, tiny_package):
    """`python -m training ... --push-to-hub` (one L2 candidate and few epochs, to keep it short)."""
    import functools

    from conftest import TINY_SIZE, tiny_backbone
    from training import fit
    from training.__main__ import parse_args, train

    monkeypatch.setattr(fit, "L2_GRID", (1e-3,))
    monkeypatch.setattr(fit, "train_linear", functools.partial(fit.train_linear, epochs=30))
    output = tmp_path / "pushed"
    repo = "fake-user/trained"
    args = parse_args(["--data", str(synthetic_dataset), "--output", str(output), "--input-size", str(TINY_SIZE),
                       "--name", "pushed-test", "--push-to-hub", repo])
    assert train(args, tiny_backbone(), digest="tiny-backbone-seed-0") == 0
    printed = capsys.readouterr().out
    commit = re.search(rf"pushed to {repo} at commit ([0-9a-f]{{40}})", printed)
    assert commit, printed[-2000:]

    remote = LungClassifier.from_pretrained(repo, revision=commit.group(1))
    np.testing.assert_array_equal(predictions(remote, images),
                                  predictions(LungClassifier.from_pretrained(output), images))
    # The card on the Hub tells readers the repo's own id.
    assert f'from_pretrained("{repo}")' in (remote.directory / "README.md").read_text()
