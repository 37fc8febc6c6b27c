"""int8 activation ranges for a package: ONNX Runtime's percentile calibration of the float32 graph on
development slices.

    python -m training.int8_calibration PACKAGE FOLDER [FOLDER ...] [--slices 32]

Training runs it on its own sources; this command adds the ranges to a package trained before
(the embedded default: `make int8-calibration`). The slices are spread evenly over the folders
and over each folder's sorted files; the ranges land in PACKAGE/int8_calibration.json, listed
in its config.json, and lung_classifier.package.onnx_build quantizes with them on each machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lung_classifier import package
from lung_classifier.decoding import windowing
from lung_classifier.decoding.images import read_slice
from lung_classifier.model.preprocessing import prepare
from lung_classifier.package.onnx_build import CALIBRATION, FLOAT32_NODES, QUANTIZED_OPS, RANGES
from lung_classifier.package.rebuild import check_weights

if TYPE_CHECKING:
    import keras

SLICES = 32
"""Calibration slices: the probe behind issue 25 measured int8 features at cosine >= 0.99 to float32's with 32."""
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}


def spread(groups: list[list[Path]], count: int = SLICES) -> list[Path]:
    """``count`` files, as evenly over the groups, and over each group's sorted files, as they allow."""
    groups = [sorted(group) for group in groups if group]
    if not groups:
        raise ValueError("no calibration slices: name folders of CT slice images or DICOM files")
    shares = [count // len(groups) + (index < count % len(groups)) for index in range(len(groups))]
    picked = []
    for group, share in zip(groups, shares):
        picked += [group[i] for i in sorted(set(np.linspace(0, len(group) - 1, min(share, len(group))).astype(int)))]
    return picked


def measure(backbone: keras.Model, paths: list[Path], config: dict[str, Any], out: Path) -> None:
    """Write the float32 graph's activation ranges over these slices (rendered as the package renders them)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    from lung_classifier.model.onnx_export import INPUT, backbone_to_onnx

    size, window = config["input"]["size"], windowing.dicom_window(config)
    pixels = [prepare(read_slice(path, dicom_window=window).rgb, size)[None] for path in paths]

    class Slices(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(pixels)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return {INPUT: batch} if (batch := next(self.remaining, None)) is not None else None

    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as work:
        graph = Path(work) / "float32.onnx"
        onnx.save(backbone_to_onnx(backbone), str(graph))
        quantize_static(graph, Path(work) / "int8.onnx", Slices(), quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=FLOAT32_NODES,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[RANGES], calibration_cache_path=out)


def add_to_package(directory: Path, backbone: keras.Model, paths: list[Path]) -> None:
    """Measure the ranges into the package and list them in its config.json."""
    config = package.read_config(directory, saved_model=False)
    measure(backbone, paths, config, directory / CALIBRATION)
    package.write_config(directory, config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Add int8 activation ranges to a model package.")
    parser.add_argument("package", type=Path, help="the package directory")
    parser.add_argument("folders", type=Path, nargs="+", help="folders of development slices (images or DICOM)")
    parser.add_argument("--slices", type=int, default=SLICES, help=f"how many slices (default {SLICES})")
    args = parser.parse_args(argv)
    from lung_classifier.model import backbone

    config = package.read_config(args.package, saved_model=False)
    source = backbone.resolve_weights()
    resnet = backbone.load_resnet50(source, input_shape=(config["input"]["size"], config["input"]["size"], 3))
    check_weights(config["backbone"]["weights_sha256"], backbone.model_digest(resnet),
                                  source.origin, allow_other_weights=False)
    groups = [[path for path in folder.rglob("*") if path.suffix.lower() in SUFFIXES] for folder in args.folders]
    paths = spread(groups, args.slices)
    add_to_package(args.package, resnet, paths)
    print(f"{args.package / CALIBRATION}: activation ranges of {len(paths)} slices from {len(args.folders)} folders")
    return 0


if __name__ == "__main__":
    sys.exit(main())
