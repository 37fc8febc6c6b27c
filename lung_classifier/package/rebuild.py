"""The graph a package runs: its own SavedModel when trusted, otherwise rebuilt from its head.

A package's own SavedModel is an arbitrary TensorFlow graph, and TF graphs can read and
write files, so it is loaded only when the caller trusts it (``trust_saved_model``).
Otherwise the graph is rebuilt here from the head's arrays and the standard ImageNet
ResNet50, once per machine, model version, weights and precision, and cached.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .format import (CONFIG, HEAD, SAVED_MODEL, PackageError, WeightsMismatchError, has_saved_model, listed_files,
                     read_config, sha256_file, write_config)
from .validation import read_head

if TYPE_CHECKING:
    from ..model.backbone import WeightsSource


def check_weights(expected: str, actual: str, origin: str, allow_other_weights: bool,
                  graph_shipped: bool = False) -> None:
    """Weights other than the head's are an error, or with allow_other_weights a warning."""
    if actual == expected:
        return
    message = (f"the ResNet50 weights from {origin} (sha256 {actual[:12]}...) differ from those the head "
               f"was trained on (sha256 {expected[:12]}...)")
    if allow_other_weights:
        warnings.warn(f"{message}; loading anyway (allow_other_weights=True): predictions may differ from "
                      "the model card", UserWarning, stacklevel=3)
        return
    raise WeightsMismatchError(
        f"{message}, so predictions would not match the model card. Use the weights file the package was "
        f"trained with (weights=... or $LUNG_CLASSIFIER_RESNET50_WEIGHTS), or pass allow_other_weights=True "
        "to load it with these weights anyway"
        + ("; or, if you trust this package, load its own SavedModel with trust_saved_model=True"
           if graph_shipped else "")
    )


def export_saved_model(directory: Path, config: dict[str, Any], source: WeightsSource,
                       allow_other_weights: bool = False, precision: str = "float32") -> str:
    """Build the full model from the head and the given ResNet50 weights, export it; returns their digest.

    The backbone computes in ``precision`` ("float32" or "bfloat16", batch norms folded
    into the convolutions); the head always in float32. A bfloat16 model also holds the
    float32 backbone, for the images it must recheck (see LungModel).
    """
    from ..model import backbone
    from ..model.network import CAM_CHOICES, LungModel, build_extractor, fold_batch_norm

    if config["gradcam"]["layers"] not in CAM_CHOICES:
        raise PackageError(f"{directory / CONFIG}: gradcam.layers must be one of {', '.join(CAM_CHOICES)}, not "
                           f"{config['gradcam']['layers']!r:.40}")

    size = config["input"]["size"]
    resnet = backbone.load_resnet50(source, input_shape=(size, size, 3))
    digest = backbone.model_digest(resnet)
    check_weights(config["backbone"]["weights_sha256"], digest, source.origin, allow_other_weights,
                  has_saved_model(config))
    exact = build_extractor(fold_batch_norm(resnet, "float32"))
    fast = exact if precision == "float32" else build_extractor(fold_batch_norm(resnet, precision))
    model = LungModel(fast, read_head(directory / HEAD, len(config["labels"])), size, cam=config["gradcam"]["layers"],
                      reference=None if fast is exact else exact)
    model.export(directory / SAVED_MODEL)
    return digest


BUILD_FORMAT = "r2"
"""The rebuilt graph's endpoints, in the cache key: r2 added `exact` (the float32 recheck of a bfloat16 build), so a
build cached before it is made again rather than answered without the recheck."""


def cache_root() -> Path:
    from ..model.backbone import cache_dir

    return cache_dir() / "packages"


def cache_name(config: dict[str, Any]) -> str:
    """The package's name as one safe path component (a name like '../../x' stays in the cache)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(config.get("name", ""))).strip(".-")
    return name[:64] or "package"


def full_package(directory: Path, config: dict[str, Any], weights: str | None = None, *,
                 trust_saved_model: bool = False, allow_other_weights: bool = False,
                 precision: str = "auto") -> tuple[Path, dict[str, Any]]:
    """Return a verified full package to load: the directory itself if its SavedModel is
    trusted, otherwise the rebuild of its head with the standard ResNet50, from the cache.

    The rebuild is keyed by the package's config digest, the weights file's digest and the
    backbone's precision (see lung_classifier.model.precision; "auto" picks it from the CPU), so
    it happens once per machine, model version, weights and precision. A trusted
    SavedModel runs as shipped: asking it for a precision is an error.
    """
    from ..model import precision as precisions

    chosen = precisions.resolve(precision, "tensorflow")[1]
    if trust_saved_model and has_saved_model(config):
        if precision != "auto":
            raise ValueError(f"precision={precision!r} applies to the graph rebuilt from the head; a trusted "
                             "SavedModel runs as shipped (leave precision at 'auto', or drop trust_saved_model)")
        return directory, config
    from ..model import backbone

    source = backbone.resolve_weights(weights)

    def build(staging: Path) -> dict[str, Any]:
        return {"weights_sha256": export_saved_model(staging, config, source, allow_other_weights, chosen),
                "precision": chosen}

    return cached_build(directory, config, source, f"{BUILD_FORMAT}-{chosen}", build, allow_other_weights,
                        f"the full model from {directory.name} and the ImageNet ResNet50 in {chosen}")


def cached_build(directory: Path, config: dict[str, Any], source: WeightsSource, kind: str,
                 build: Callable[[Path], dict[str, Any]], allow_other_weights: bool,
                 what: str) -> tuple[Path, dict[str, Any]]:
    """The package's build of this ``kind`` from the cache, or ``build(staging)`` into it (a copy of the package's
    own files, to which it adds its graph and returns the "rebuilt" record: weights_sha256 and its settings).

    Keyed by the package's config digest, the weights file's digest and ``kind``; the weights a cached build
    used are checked against the head's on every load. Written beside the cache entry and moved in whole.
    """
    weights_file = sha256_file(source.path)
    target = cache_root() / f"{cache_name(config)}-{sha256_file(directory / CONFIG)[:16]}-{weights_file[:16]}-{kind}"
    if (target / CONFIG).is_file():
        try:
            cached = read_config(target)
            used = cached["rebuilt"]["weights_sha256"]
        except (PackageError, KeyError, TypeError) as exc:
            print(f"lung_classifier: rebuilding damaged cached model ({exc})", file=sys.stderr)
        else:
            check_weights(config["backbone"]["weights_sha256"], used, source.origin, allow_other_weights,
                          has_saved_model(config))
            return target, cached
    print(f"lung_classifier: building {what} (first use on this machine only)", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        for name in listed_files(config, saved_model=False):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(directory / name, staging / name)
            if sha256_file(staging / name) != config["files"][name]:
                raise PackageError(f"{directory}: {name} changed while it was being copied; try again")
        rebuilt = {**build(staging), "weights_file_sha256": weights_file,
                   "source_config_sha256": sha256_file(directory / CONFIG)}
        full_config = write_config(staging, {**config, "rebuilt": rebuilt})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target, full_config
