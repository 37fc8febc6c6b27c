"""The ONNX graphs a package runs on ONNX Runtime: built here from the standard ResNet50, never downloaded.

float32: the ImageNet ResNet50 written out layer by layer (lung_classifier.model.onnx_export). int8:
that graph quantized (QDQ, per-channel int8 weights, uint8 activations) with the activation ranges
the package ships in CALIBRATION, numbers measured on development slices when it was trained
(training/int8_calibration.py). A package's files are only data here (config, head arrays,
ranges), so from_pretrained runs nothing it downloaded. Built once per machine, model version,
weights file and format, and cached beside the TensorFlow rebuild (package.rebuild.cached_build);
TensorFlow is imported only to build.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PackageError
from .format import has_saved_model
from .rebuild import cached_build, check_weights

CALIBRATION = "int8_calibration.json"
"""Per-tensor activation ranges of the float32 graph (ONNX Runtime's calibration-cache JSON), in the package."""
FLOAT32_GRAPH = "backbone.float32.onnx"
INT8_GRAPH = "backbone.int8.onnx"
ONNX_FORMAT = "o1"
"""The exported graph's layout, in the cache key: a change to the export builds the graphs again."""
QUANTIZED_OPS = ["Conv", "MaxPool"]
"""Quantized operators: residual additions stay float32 (quantized too they cut the worst feature cosine against
float32 from 0.990 to 0.982 on 32 development slices, for no speed)."""
RANGES = "Percentile"
"""How activation ranges are set: ONNX Runtime's 0.001-99.999 percentiles of each tensor on the calibration slices.
Min-max ranges let rare extremes coarsen the steps: the largest probability moved 0.29 against float32 on 240
development slices (0.13 at the 99th percentile), 0.135 (0.10) with percentiles."""
FLOAT32_NODES = ["conv1_conv/conv"]
"""The stem convolution stays float32: it sees mean-subtracted pixels on 3 channels, where int8 lost most (worst
feature cosine 0.974 with it quantized, 0.990 without) and gained nothing in speed. Keeping the conv2 or conv5
stage float32 too changed the probabilities' error by under 0.01 and cost 10% of the speed."""


def has_calibration(config: dict[str, Any]) -> bool:
    return CALIBRATION in config.get("files", {})


def _number(end: Any) -> float:
    """One end of a range as the cache writes it: a number, or a float32 array of one number."""
    if isinstance(end, dict):
        if end.get("dtype") != "float32":
            raise ValueError(f"a range end of dtype {end.get('dtype')!r:.20}")
        end = end["data"]
        end = end[0] if isinstance(end, list) and len(end) == 1 else end
    if isinstance(end, bool) or not isinstance(end, (int, float)):
        raise ValueError(f"a range end that is not a number: {end!r:.40}")
    return float(end)


def read_ranges(calibration: Path) -> dict[str, tuple[float, float]]:
    """The package's ranges, checked: RANGES, tensor name -> (lowest, highest), finite float32 numbers, in order."""
    try:
        cache = json.loads(calibration.read_text())
        if cache["calibration_method"]["value"] != f"CalibrationMethod.{RANGES}" or not cache["data"]:
            raise ValueError(f"not {RANGES} ranges")
        ranges = {}
        for name, entry in cache["data"].items():
            low, high = (_number(entry[end]) for end in ("lowest", "highest"))
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(f"{name!r:.60}: range [{low}, {high}]")
            ranges[name] = (low, high)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackageError(f"{calibration.name}: not ONNX Runtime {RANGES} calibration ranges ({exc})") from None
    return ranges


def write_ranges(ranges: dict[str, tuple[float, float]], out: Path) -> None:
    """The ranges as ONNX Runtime's calibration cache, written here from checked numbers only."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData, save_tensors_data

    data = {name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
            for name, (low, high) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod[RANGES], data), out)


def quantize(float_graph: Path, calibration: Path, out: Path) -> None:
    """The int8 graph from the float32 one and the package's measured ranges (no images needed here)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="int8-ranges-") as work:
        checked = Path(work) / CALIBRATION
        write_ranges(read_ranges(calibration), checked)
        quantize_static(float_graph, out, calibration_data_reader=None, quant_format=QuantFormat.QDQ,
                        per_channel=True, op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=FLOAT32_NODES,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[RANGES], calibration_cache_path=checked)


def float32_graph(config: dict[str, Any], source: Any, allow_other_weights: bool, out: Path) -> str:
    """Export the standard ResNet50 (with the head's weights checked) as ONNX; returns the weights' digest."""
    import onnx

    from ..model import backbone
    from ..model.onnx_export import backbone_to_onnx

    size = config["input"]["size"]
    resnet = backbone.load_resnet50(source, input_shape=(size, size, 3))
    digest = backbone.model_digest(resnet)
    check_weights(config["backbone"]["weights_sha256"], digest, source.origin, allow_other_weights,
                  has_saved_model(config))
    onnx.save(backbone_to_onnx(resnet), str(out))
    return digest


def onnx_package(directory: Path, config: dict[str, Any], weights: str | None = None, *,
                 allow_other_weights: bool = False, precision: str = "int8") -> tuple[Path, dict[str, Any]]:
    """A verified package holding the ONNX graph(s) for ``precision``: float32 always (the int8 build's recheck),
    int8 too for "int8". A package without CALIBRATION cannot run in int8 (PackageError says how to add it)."""
    from ..model import backbone

    if precision == "int8" and not has_calibration(config):
        raise PackageError(f"{directory.name} has no {CALIBRATION}, so it cannot run in int8: add the ranges with "
                           "`python -m training.int8_calibration PACKAGE FOLDER...`, or load it with "
                           "precision='float32'")
    source = backbone.resolve_weights(weights)

    def build(staging: Path) -> dict[str, Any]:
        digest = float32_graph(config, source, allow_other_weights, staging / FLOAT32_GRAPH)
        if precision == "int8":
            quantize(staging / FLOAT32_GRAPH, staging / CALIBRATION, staging / INT8_GRAPH)
        return {"weights_sha256": digest, "runtime": "onnxruntime", "precision": precision}

    return cached_build(directory, config, source, f"{ONNX_FORMAT}-{precision}", build, allow_other_weights,
                        f"the ONNX graph of {directory.name} and the ImageNet ResNet50 in {precision}")

