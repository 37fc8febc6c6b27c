"""The network: frozen ResNet50 taps -> pooled features -> trained head, and its SavedModel export.

The model takes raw RGB pixels (0..255, already resized by :mod:`preprocessing`), so
ResNet50's own input normalisation lives inside the graph and no caller can get it wrong.
The head's arrays (:class:`Head`) are the only trained parts; everything else is the
standard frozen ImageNet ResNet50.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

TAPS = ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
"""ResNet50 stage outputs whose pooled activations feed the head (512 + 1024 + 2048 = 3584)."""
CAM_TAP = 1
"""Grad-CAM is taken at conv4 (14x14 at 224 px): finer than conv5's 7x7, still semantic."""
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""keras.applications.resnet50.preprocess_input ("caffe" mode): RGB->BGR, minus ImageNet mean."""


@dataclass(frozen=True)
class Head:
    """Trained parts: feature standardisation, linear classifier, temperature, OOD statistics."""

    feature_mean: np.ndarray  # (D,)
    feature_scale: np.ndarray  # (D,)
    kernel: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    temperature: np.ndarray  # () softmax temperature fitted on validation
    ood_components: np.ndarray  # (K, D) principal axes of standardised training features
    ood_scale: np.ndarray  # (K,) their standard deviations
    ood_residual: np.ndarray  # () mean squared off-subspace residual on training features
    ood_threshold: np.ndarray  # () score above which an input is out of distribution

    def save(self, path: Path) -> None:
        """Plain float arrays in an .npz: loadable without pickle."""
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name), np.float32) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> "Head":
        with np.load(path, allow_pickle=False) as arrays:
            missing = [f.name for f in fields(cls) if f.name not in arrays]
            if missing:
                raise ValueError(f"{path}: head arrays missing: {', '.join(missing)}")
            return cls(**{f.name: arrays[f.name].astype(np.float32) for f in fields(cls)})


def build_extractor(backbone: keras.Model) -> keras.Model:
    """Backbone -> the feature maps named in TAPS, from raw 0..255 RGB pixels."""
    pixels = keras.Input(shape=backbone.input_shape[1:], name="pixels")
    bgr = keras.ops.flip(pixels, axis=-1) - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN)
    taps = keras.Model(backbone.input, [backbone.get_layer(name).output for name in TAPS])
    extractor = keras.Model(pixels, taps(bgr), name="resnet50_taps")
    extractor.trainable = False
    return extractor


def pool(maps: list[tf.Tensor]) -> tf.Tensor:
    """Global-average-pool each tap and concatenate: (N, 3584)."""
    return tf.concat([tf.reduce_mean(m, axis=[1, 2]) for m in maps], axis=-1)


def head_outputs(features: tf.Tensor, head: "HeadVariables") -> dict[str, tf.Tensor]:
    """Calibrated probabilities, logits and OOD score from pooled features."""
    z = (features - head.feature_mean) / head.feature_scale
    logits = tf.matmul(z, head.kernel) + head.bias
    projected = tf.matmul(z, head.ood_components, transpose_b=True)
    inside = tf.reduce_mean(tf.square(projected / head.ood_scale), axis=-1)
    residual = tf.reduce_mean(tf.square(z - tf.matmul(projected, head.ood_components)), axis=-1)
    # Both terms are ~1 on training data: distance within the subspace and off it.
    ood_score = 0.5 * (inside + residual / head.ood_residual)
    return {
        "probabilities": tf.nn.softmax(logits / head.temperature, axis=-1),
        "logits": logits,
        "ood_score": ood_score,
    }


class HeadVariables(tf.Module):
    """The head's arrays as tf.Variables, so they are tracked and exported with the graph."""

    def __init__(self, head: Head):
        super().__init__(name="head")
        for f in fields(head):
            setattr(self, f.name, tf.Variable(getattr(head, f.name), trainable=False, name=f.name))


class LungModel(tf.Module):
    """Extractor + head, with the three endpoints the package exports."""

    def __init__(self, extractor: keras.Model, head: Head, input_size: int):
        super().__init__(name="lung_model")
        self.extractor = extractor
        self.head = HeadVariables(head)
        self.input_size = input_size
        self.signature = [tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="images")]
        self.predict = tf.function(self._predict, input_signature=self.signature)
        self.explain = tf.function(self._explain, input_signature=self.signature)
        self.features = tf.function(self._features, input_signature=self.signature)

    def _features(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"features": pool(self.extractor(images, training=False))}

    def _predict(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = head_outputs(self._features(images)["features"], self.head)
        return {"probabilities": outputs["probabilities"], "ood_score": outputs["ood_score"]}

    def _explain(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """Grad-CAM of the predicted class at the CAM tap, normalised to [0, 1] per image."""
        maps = self.extractor(images, training=False)
        with tf.GradientTape() as tape:
            tape.watch(maps[CAM_TAP])
            outputs = head_outputs(pool(maps), self.head)
            predicted = tf.argmax(outputs["logits"], axis=-1)
            score = tf.gather(outputs["logits"], predicted, axis=1, batch_dims=1)
        gradients = tape.gradient(score, maps[CAM_TAP])
        weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps[CAM_TAP], axis=-1))
        cam = cam / (tf.reduce_max(cam, axis=[1, 2], keepdims=True) + 1e-8)
        return {"probabilities": outputs["probabilities"], "ood_score": outputs["ood_score"], "heatmap": cam}

    def export(self, path: Path) -> None:
        """Write a SavedModel whose signatures TensorFlow Serving serves as they are."""
        archive = keras.export.ExportArchive()  # tracks the variables the endpoints use, once each
        archive.add_endpoint("serving_default", self.predict)
        archive.add_endpoint("explain", self.explain)
        archive.add_endpoint("features", self.features)
        archive.write_out(str(path), verbose=False)
