"""Shared fixtures: a tiny stand-in backbone, synthetic CT-like data, a tiny full package."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "iqothnccd"
TINY_SIZE = 64


IN_CI = os.environ.get("CI", "").lower() == "true"

from lung_classifier.archive.ray_engine import LOOPBACK_ONLY  # noqa: E402 - before any test imports ray

os.environ.update(LOOPBACK_ONLY)  # the tests' Ray clusters listen on loopback only
WAIT_S = 120.0
"""The longest a test waits for what must happen (a page update, a queued answer, an upload's deletion),
sized for a loaded 2-core CI machine (a browser test's 30 s wait for the details JSON ran out there).
Every wait polls and returns as soon as it happens, so no test takes longer on a fast machine."""


def require(condition: object, reason: str) -> None:
    """Go on if `condition` holds; otherwise skip with `reason`, or in CI (CI=true) fail with it.

    The one skip point of the suite: a missing browser, weight file or dataset is a
    local inconvenience, but a CI run that skips tests would pass without testing.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: every test must run here)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def need_shared_data() -> Path:
    """The real dataset (CI and sessions have ../shared beside the repo)."""
    require(SHARED_DATA.is_dir(), f"real IQ-OTH/NCCD data not found at {SHARED_DATA} (../shared beside the repo)")
    return SHARED_DATA


def tiny_backbone(seed: int = 0):
    """Three strided convs named like ResNet50's taps: the same graph shape, 1000x cheaper."""
    import keras

    from lung_classifier.model.network import TAPS

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    for name, channels in zip(TAPS, (8, 16, 32)):
        x = keras.layers.Conv2D(channels, 3, strides=4 if name == TAPS[0] else 2, padding="same",
                                activation="relu", name=name)(x)
    model = keras.Model(inputs, x)
    model.trainable = False
    return model


def synthetic_slice(label: str, index: int) -> Image.Image:
    """A dark disc 'body' with class-dependent bright blobs; the 5 slices of one scan look alike.

    Each scan has its own image size, as scans from different sessions of the real data do.
    """
    size = 80 + 8 * (index // 5)
    rng = np.random.default_rng(zlib.crc32(f"{label}-{index // 5}".encode()))
    yy, xx = np.mgrid[:size, :size]
    image = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.42) ** 2, 60.0, 0.0)
    blobs = {"Normal": 0, "Benign": 2, "Malignant": 8}[label]
    for _ in range(blobs):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        radius = size * (0.05 if label == "Benign" else 0.11)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 230.0
    image += np.random.default_rng(index).normal(0, 6, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L")


@pytest.fixture
def decode_in_process(monkeypatch) -> None:
    """Decode files in the test's own process, as a decode worker does, so that a test can watch or replace the
    decoders' internals (the worker boundary itself: test_decode_pool.py)."""
    from lung_classifier.decoding import images

    monkeypatch.setattr(images, "_in_worker", images.decode_here)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """IQ-OTH/NCCD layout (misspelling included) with 30 synthetic slices per class."""
    root = tmp_path_factory.mktemp("data") / "The IQ-OTHNCCD lung cancer dataset"
    for folder, label in (("Normal cases", "Normal"), ("Bengin cases", "Benign"), ("Malignant cases", "Malignant")):
        (root / folder).mkdir(parents=True)
        for index in range(1, 31):
            synthetic_slice(label, index).save(root / folder / f"{folder.split()[0]} case ({index}).png")
    return root.parent


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """Keep tests out of the user's cache (features, rebuilt packages)."""
    root = tmp_path_factory.mktemp("cache")
    os.environ["LUNG_CLASSIFIER_CACHE"] = str(root)
    return root


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory, synthetic_dataset, cache_root) -> Path:
    """A full package trained by `training` on the synthetic set with the tiny backbone."""
    from training.__main__ import parse_args, train

    output = tmp_path_factory.mktemp("package") / "tiny"
    args = parse_args(["--data", str(synthetic_dataset), "--output", str(output),
                       "--input-size", str(TINY_SIZE), "--name", "tiny-test", "--repeats", "2"])
    assert train(args, tiny_backbone(), digest="tiny-backbone-seed-0") == 0
    return output


@pytest.fixture
def tiny_standard_backbone(monkeypatch, tmp_path):
    """Make the tiny backbone stand in for the standard ResNet50 when a package is rebuilt from its head.

    The 'weights file' holds the seed; the stand-in's digest is 'tiny-backbone-seed-<seed>', the digest
    the tiny package records. Call the returned function to switch to another seed's weights.
    """
    from lung_classifier.model import backbone

    weights = tmp_path / "tiny-standard-backbone.weights"
    digests: dict[int, str] = {}

    def load(source, input_shape=None):
        seed = int(source.path.read_text())
        model = tiny_backbone(seed)
        digests[id(model)] = f"tiny-backbone-seed-{seed}"
        return model

    def use_seed(seed: int) -> None:
        weights.write_text(str(seed))

    use_seed(0)
    monkeypatch.setattr(backbone, "resolve_weights",
                        lambda path=None: backbone.WeightsSource(weights, "tiny test weights"))
    monkeypatch.setattr(backbone, "load_resnet50", load)
    monkeypatch.setattr(backbone, "model_digest", lambda model: digests[id(model)])
    return use_seed


def usable_cores() -> int:
    """The cores this process may run on: TensorFlow's default thread count here, and the local Ray's CPUs."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@pytest.fixture(scope="module")
def local_ray(cache_root):
    """One local Ray for a test module (it starts slowly on 2 cores), stopped after; the cache folder is set
    first, so its workers inherit it. The engines use it rather than starting their own."""
    import ray

    ray.init(num_cpus=max(2, usable_cores()), include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
