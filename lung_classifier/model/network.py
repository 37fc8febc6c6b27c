"""The network: frozen ResNet50 taps -> pooled features -> trained head, and its SavedModel export.

The model takes raw RGB pixels (0..255, already resized by :mod:`preprocessing`), so
ResNet50's own input normalisation lives inside the graph and no caller can get it wrong.
The head's arrays (:class:`.head.Head`) are the only trained parts; everything else is the
standard frozen ImageNet ResNet50.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

from .head import KNN_K, SERVED, Head
from .precision import RECHECK

TAPS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
"""ResNet50 stage outputs whose pooled activations feed the head (512 + 1024 + 2048 = 3584)."""
CAM_CHOICES = {"conv4": (TAPS[1],), "conv5": (TAPS[2],), "conv4+conv5": (TAPS[1], TAPS[2])}
"""Where Grad-CAM can be taken; training picks one by a deletion test and records it in the package."""
DEFAULT_CAM = "conv4+conv5"
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""keras.applications.resnet50.preprocess_input ("caffe" mode): RGB->BGR, minus ImageNet mean."""
UPPER_STAGE = "resnet50_conv5"


def build_extractor(backbone: keras.Model) -> keras.Model:
    """Backbone -> the feature maps named in TAPS, from raw 0..255 RGB pixels.

    The last stage is its own sub-model (UPPER_STAGE) so Grad-CAM can differentiate
    through it from the conv4 maps (see :func:`split_extractor`).
    """
    pixels = keras.Input(shape=backbone.input_shape[1:], name="pixels")
    bgr = keras.ops.flip(pixels, axis=-1) - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN)
    conv3, conv4, conv5 = (backbone.get_layer(name).output for name in TAPS)
    lower = keras.Model(backbone.input, [conv3, conv4], name="resnet50_to_conv4")
    upper = keras.Model(conv4, conv5, name=UPPER_STAGE)
    maps3, maps4 = lower(bgr)
    extractor = keras.Model(pixels, [maps3, maps4, upper(maps4)], name="resnet50_taps")
    extractor.trainable = False
    return extractor


class _Folded(keras.layers.Layer):
    """Where a BatchNormalization was: its scale and shift now live in the convolution before it."""

    def call(self, inputs, mask=None, training=None):
        return inputs


FLOAT32_STEM = ("conv1", "pool1")
"""Layers kept in float32 in a bfloat16 backbone: the stem sees mean-subtracted pixels (up to ±152,
where bfloat16's step is 1) and costs 3% of the FLOPs; in bfloat16 it doubled the probability error."""


def fold_batch_norm(backbone: keras.Model, dtype: str = "float32") -> keras.Model:
    """The backbone for inference: each `X_bn` folded into its `X_conv`, layers computing in dtype.

    Folding saves two elementwise passes per convolution (the same function up to float32
    round-off); in "bfloat16" the folded kernels are stored in bfloat16, so no call casts
    25 M weights again, and the stem (FLOAT32_STEM) stays float32. Layers without a `_bn`
    partner (a stand-in backbone) are kept as they are.
    """
    names = {layer.name for layer in backbone.layers}
    pairs = {layer.name: layer.name.removesuffix("_conv") + "_bn" for layer in backbone.layers
             if isinstance(layer, keras.layers.Conv2D) and layer.name.endswith("_conv")
             and layer.name.removesuffix("_conv") + "_bn" in names}
    folded_bn = set(pairs.values())

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        policy = "float32" if layer.name.startswith(FLOAT32_STEM) else dtype
        if layer.name in folded_bn:
            return _Folded(name=layer.name, dtype=policy)
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(backbone, clone_function=clone)
    for layer in backbone.layers:
        if layer.name in pairs:
            bn = backbone.get_layer(pairs[layer.name])
            gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in bn.get_weights())
            scale = gamma / np.sqrt(variance + bn.epsilon)
            kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
            folded.get_layer(layer.name).set_weights([kernel * scale, (bias - mean) * scale + beta])
        elif layer.name not in folded_bn and layer.weights:
            folded.get_layer(layer.name).set_weights(layer.get_weights())
    folded.trainable = False
    return folded


def split_extractor(extractor: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(pixels -> conv3, conv4 maps) and (conv4 maps -> conv5 maps), sharing the extractor's weights."""
    return keras.Model(extractor.input, extractor.outputs[:2]), extractor.get_layer(UPPER_STAGE)


def pool(maps: list[tf.Tensor]) -> tf.Tensor:
    """Global-average-pool each tap in float32 (whatever the backbone computed in) and concatenate: (N, 3584)."""
    return tf.concat([tf.reduce_mean(tf.cast(m, tf.float32), axis=[1, 2]) for m in maps], axis=-1)


def head_outputs(features: tf.Tensor, head: "HeadVariables") -> dict[str, tf.Tensor]:
    """Calibrated probabilities, decided label, logits, decision margin and OOD score and flag from pooled features."""
    z = (features - head.feature_mean) / head.feature_scale
    logits = tf.matmul(z, head.kernel) + head.bias
    scaled = logits / head.temperature
    projected = tf.matmul(z, head.ood_components, transpose_b=True)
    inside = tf.reduce_mean(tf.square(projected / head.ood_scale), axis=-1)
    residual = tf.reduce_mean(tf.square(z - tf.matmul(projected, head.ood_components)), axis=-1)
    # Both terms are ~1 on training data: distance within the subspace and off it.
    pca_score = 0.5 * (inside + residual / head.ood_residual)
    near = tf.matmul(z, head.knn_components, transpose_b=True)
    near = near / tf.maximum(tf.norm(near, axis=-1, keepdims=True), 1e-12)
    k = tf.minimum(KNN_K, tf.shape(head.knn_bank)[0])
    knn_distance = 1.0 - tf.math.top_k(tf.matmul(near, head.knn_bank, transpose_b=True), k=k).values[:, -1]
    # One score in the PCA score's units: above ood_threshold exactly when either part is above its threshold.
    ood_score = tf.maximum(pca_score, knn_distance * head.ood_threshold / head.knn_threshold)
    decision = tf.nn.log_softmax(scaled, axis=-1) + head.decision_offsets
    top2 = tf.math.top_k(decision, k=2).values
    return {
        "probabilities": tf.nn.softmax(scaled, axis=-1),
        "label": tf.argmax(decision, axis=-1, output_type=tf.int32),
        "logits": logits,
        "margin": top2[:, 0] - top2[:, 1],
        "ood_score": ood_score,
        "out_of_distribution": ood_score > head.ood_threshold,
    }


class HeadVariables(tf.Module):
    """The head's arrays as tf.Variables, so they are tracked and exported with the graph."""

    def __init__(self, head: Head):
        super().__init__(name="head")
        for f in fields(head):
            setattr(self, f.name, tf.Variable(getattr(head, f.name), trainable=False, name=f.name))


class LungModel(tf.Module):
    """Extractor + head, with the three endpoints the package exports.

    With a ``reference`` extractor (float32, the same weights) the ``extractor`` may compute
    in reduced precision: images whose answer it leaves near a decision boundary or near the
    OOD threshold are recomputed with the reference, so labels and flags are float32's.
    """

    def __init__(self, extractor: keras.Model, head: Head, input_size: int, cam: str = DEFAULT_CAM,
                 reference: keras.Model | None = None):
        super().__init__(name="lung_model")
        if cam not in CAM_CHOICES:
            raise ValueError(f"unknown Grad-CAM layer choice {cam!r}: one of {', '.join(CAM_CHOICES)}")
        self.extractor = extractor
        self.reference = reference
        self.head = HeadVariables(head)
        self.input_size = input_size
        self.cam = cam
        self.signature = [tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="images")]
        self.predict = tf.function(self._predict, input_signature=self.signature)
        self.explain = tf.function(self._explain, input_signature=self.signature)
        self.features = tf.function(self._features, input_signature=self.signature)
        self.exact = tf.function(self._exact, input_signature=self.signature)

    def _features(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"features": pool(self.extractor(images))}

    def _served(self, images: tf.Tensor, extractor: keras.Model) -> dict[str, tf.Tensor]:
        outputs = head_outputs(pool(extractor(images)), self.head)
        return {name: outputs[name] for name in (*SERVED, "margin")}

    def _exact(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Served outputs from the float32 reference alone: the library's recheck of answers that lie near a
        threshold it applies outside the graph (a source's calibration and rule-out threshold)."""
        outputs = self._served(images, self.reference if self.reference is not None else self.extractor)
        return {name: outputs[name] for name in SERVED}

    def _predict(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self._checked(images, self._served)
        return {name: outputs[name] for name in SERVED}

    def _checked(self, images: tf.Tensor, run) -> dict[str, tf.Tensor]:
        """run(images, extractor) with the fast extractor, and with the reference for the unsure images."""
        outputs = run(images, self.extractor)
        if self.reference is None:
            return outputs
        threshold = self.head.ood_threshold
        recheck = RECHECK["bfloat16"]
        unsure = tf.where((outputs["margin"] < recheck.margin)
                          | (tf.abs(outputs["ood_score"] - threshold) < recheck.ood_band * threshold))

        def recheck() -> dict[str, tf.Tensor]:
            exact = run(tf.gather_nd(images, unsure), self.reference)
            return {name: tf.tensor_scatter_nd_update(value, unsure, exact[name]) for name, value in outputs.items()}

        return tf.cond(tf.size(unsure) > 0, recheck, lambda: outputs)

    def cam_maps(self, images: tf.Tensor, extractor: keras.Model | None = None,
                 ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Head outputs, and Grad-CAM of the decided label's logit at conv4 and at conv5.

        The conv4 maps are watched and conv5 is computed from them inside the tape, so the
        conv4 gradient flows through the whole last stage, not only through conv4's own pool.
        """
        lower, upper = split_extractor(extractor or self.extractor)
        maps3, maps4 = lower(images)
        with tf.GradientTape() as tape:
            tape.watch(maps4)
            maps5 = upper(maps4)
            outputs = head_outputs(pool([maps3, maps4, maps5]), self.head)
            score = tf.gather(outputs["logits"], outputs["label"], axis=1, batch_dims=1)
        gradients4, gradients5 = tape.gradient(score, [maps4, maps5])
        grid = tf.shape(maps4)[1:3]
        cams = {}
        for name, maps, gradients in ((TAPS[1], maps4, gradients4), (TAPS[2], maps5, gradients5)):
            maps, gradients = tf.cast(maps, tf.float32), tf.cast(gradients, tf.float32)
            weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
            cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))
            cam = tf.image.resize(cam, grid, method="bilinear")[..., 0]
            cams[name] = cam / (tf.reduce_max(cam, axis=[1, 2], keepdims=True) + 1e-8)
        return outputs, cams

    def _explained(self, images: tf.Tensor, extractor: keras.Model) -> dict[str, tf.Tensor]:
        outputs, cams = self.cam_maps(images, extractor)
        heatmap = tf.add_n([cams[name] for name in CAM_CHOICES[self.cam]]) / len(CAM_CHOICES[self.cam])
        return {**{name: outputs[name] for name in (*SERVED, "margin")}, "heatmap": heatmap}

    def _explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Served outputs plus the Grad-CAM heatmap (conv4 grid, [0, 1] per image) of the chosen layers."""
        outputs = self._checked(images, self._explained)
        return {name: outputs[name] for name in (*SERVED, "heatmap")}

    def export(self, path: Path) -> None:
        """Write a SavedModel whose signatures TensorFlow Serving serves as they are."""
        archive = keras.export.ExportArchive()  # tracks the variables the endpoints use, once each
        archive.add_endpoint("serving_default", self.predict)
        archive.add_endpoint("explain", self.explain)
        archive.add_endpoint("features", self.features)
        if self.reference is not None:
            archive.add_endpoint("exact", self.exact)
        archive.write_out(str(path), verbose=False)
