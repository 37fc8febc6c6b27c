"""A Keras backbone -> an ONNX graph of the same function: raw RGB pixels in, the head's pooled features out.

Built once per machine from the standard ResNet50 (see lung_classifier.package.onnx_build), so
ONNX Runtime can answer without TensorFlow. The graph is written layer by layer from the
model's own config (the layers ResNet50 uses: zero padding, convolution, batch norm,
ReLU, max pooling, add), each batch norm folded into the convolution before it, with the
same input normalisation and pooling as :func:`.network.build_extractor` and
:func:`.network.pool`; tests/test_onnx.py holds its features to the Keras graph's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .network import CAFFE_BGR_MEAN, TAPS

if TYPE_CHECKING:
    import keras
    import onnx

OPSET = 17
INPUT = "pixels"
OUTPUT = "features"


def _inputs(node_args: Any) -> Iterator[str]:
    """The names of the layers whose outputs a layer's inbound node takes, in order."""
    if isinstance(node_args, dict):
        history = node_args.get("config", {}).get("keras_history") if node_args.get(
            "class_name") == "__keras_tensor__" else None
        if history:
            yield history[0]
        return
    if isinstance(node_args, (list, tuple)):
        for item in node_args:
            yield from _inputs(item)


def _pair(value: Any) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 2


class _Graph:
    """ONNX nodes and initializers, collected while the Keras layers are walked."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


def _absorbs_padding(layer: dict[str, Any], relu_output: bool) -> bool:
    """Whether the layer after a ZeroPadding2D can pad itself: a "valid" convolution always; a "valid" max pool
    of a ReLU output too (its own padding is -inf, the same as zeros where every value is >= 0)."""
    if layer["config"].get("padding") != "valid":
        return False
    return layer["class_name"] == "Conv2D" or (layer["class_name"] == "MaxPooling2D" and relu_output)


def _convolution(graph: _Graph, name: str, source: str, config: dict[str, Any], kernel: np.ndarray,
                 bias: np.ndarray, pads: list[int] | None = None) -> str:
    """Conv2D (HWIO kernel) as ONNX Conv (OIHW); Keras "same" padding is ONNX SAME_UPPER, a ZeroPadding2D
    before it explicit ``pads`` (top, left, bottom, right)."""
    if config.get("data_format", "channels_last") != "channels_last" or int(config.get("groups", 1)) != 1 \
            or _pair(config.get("dilation_rate", 1)) != [1, 1]:
        raise ValueError(f"{name}: only ungrouped, undilated channels-last convolutions are exported")
    graph.constant(f"{name}/kernel", kernel.transpose(3, 2, 0, 1).astype(np.float32))
    graph.constant(f"{name}/bias", bias.astype(np.float32))
    padding = {"auto_pad": "SAME_UPPER"} if config["padding"] == "same" else {"pads": pads or [0, 0, 0, 0]}
    output = graph.node("Conv", [source, f"{name}/kernel", f"{name}/bias"], f"{name}/conv",
                        kernel_shape=_pair(config["kernel_size"]), strides=_pair(config["strides"]), **padding)
    return _activation(graph, name, output, config.get("activation", "linear"))


def _activation(graph: _Graph, name: str, source: str, activation: str) -> str:
    if activation == "linear":
        return source
    if activation != "relu":
        raise ValueError(f"{name}: activation {activation!r} is not exported (relu or linear only)")
    return graph.node("Relu", [source], f"{name}/relu")


def _folded(conv: "keras.layers.Layer", bn: "keras.layers.Layer") -> tuple[np.ndarray, np.ndarray]:
    """A convolution's kernel and bias with the batch norm after it folded in (in float64, then float32)."""
    weights = [np.asarray(w, np.float64) for w in conv.get_weights()]
    kernel, bias = weights[0], (weights[1] if len(weights) > 1 else np.zeros(weights[0].shape[-1]))
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return kernel * scale, (bias - mean) * scale + beta


def backbone_to_onnx(backbone: "keras.Model") -> "onnx.ModelProto":
    """The backbone as ONNX: (N, S, S, 3) float32 pixels 0..255 -> (N, 3584) pooled features of TAPS."""
    import onnx

    config = backbone.get_config()
    layers = {layer["config"]["name"]: layer for layer in config["layers"]}
    consumers: dict[str, list[str]] = {}
    for layer in config["layers"]:
        for node in layer["inbound_nodes"]:
            for source in _inputs(node["args"]):
                consumers.setdefault(source, []).append(layer["config"]["name"])
    graph = _Graph()
    size = backbone.input_shape[1:]
    # caffe preprocessing (RGB -> BGR, minus the ImageNet mean), then NHWC -> NCHW
    bgr = graph.node("Gather", [INPUT, graph.constant("rgb_to_bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=3)
    centred = graph.node("Sub", [bgr, graph.constant("imagenet_mean", np.array(CAFFE_BGR_MEAN, np.float32))],
                         "centred")
    inputs = [layer["config"]["name"] for layer in config["layers"] if layer["class_name"] == "InputLayer"]
    if len(inputs) != 1:
        raise ValueError(f"a backbone has one input layer, not {len(inputs)}")
    tensors = {inputs[0]: graph.node("Transpose", [centred], "nchw", perm=[0, 3, 1, 2])}
    folded: set[str] = set()
    padded: dict[str, list[int]] = {}  # explicit pads of a layer fed by a ZeroPadding2D
    for layer in config["layers"]:
        name, kind, settings = layer["config"]["name"], layer["class_name"], layer["config"]
        if kind == "InputLayer":
            continue
        sources = [tensors[source] for node in layer["inbound_nodes"] for source in _inputs(node["args"])]
        if name in folded:
            tensors[name] = sources[0]
        elif kind == "Conv2D":
            conv = backbone.get_layer(name)
            after = consumers.get(name, [])
            if len(after) == 1 and layers[after[0]]["class_name"] == "BatchNormalization":
                kernel, bias = _folded(conv, backbone.get_layer(after[0]))
                folded.add(after[0])
            else:
                weights = conv.get_weights()
                kernel, bias = weights[0], weights[1] if len(weights) > 1 else np.zeros(weights[0].shape[-1])
            tensors[name] = _convolution(graph, name, sources[0], settings, np.asarray(kernel), np.asarray(bias),
                                         padded.get(name))
        elif kind == "ZeroPadding2D":
            (top, bottom), (left, right) = (_pair(p) for p in settings["padding"])
            after = consumers.get(name, [])
            if len(after) == 1 and _absorbs_padding(layers[after[0]], relu_output=sources[0].endswith("/relu")):
                padded[after[0]] = [top, left, bottom, right]  # the next layer pads as it computes
                tensors[name] = sources[0]
            else:
                pads = graph.constant(f"{name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
                tensors[name] = graph.node("Pad", [sources[0], pads], name)
        elif kind in ("Activation", "ReLU"):
            tensors[name] = _activation(graph, name, sources[0], settings.get("activation", "relu"))
        elif kind == "MaxPooling2D":
            if settings["padding"] != "valid":
                raise ValueError(f"{name}: only valid max pooling is exported")
            tensors[name] = graph.node("MaxPool", sources[:1], name, kernel_shape=_pair(settings["pool_size"]),
                                       strides=_pair(settings["strides"]), pads=padded.get(name, [0, 0, 0, 0]))
        elif kind == "Add":
            tensors[name] = graph.node("Add", sources, name)
        else:
            raise ValueError(f"{name}: layer type {kind} is not exported to ONNX")
    pooled = [graph.node("Flatten", [graph.node("GlobalAveragePool", [tensors[tap]], f"{tap}/pool")], f"{tap}/flat")
              for tap in TAPS]
    graph.node("Concat", pooled, OUTPUT, axis=1)
    pixels = onnx.helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, ["batch", *size])
    features = onnx.helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT, ["batch", None])
    model = onnx.helper.make_model(
        onnx.helper.make_graph(graph.nodes, "lung_classifier_backbone", [pixels], [features], graph.initializers),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="lung_classifier")
    onnx.checker.check_model(model)
    return model
