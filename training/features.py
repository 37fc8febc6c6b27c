"""Backbone features computed once and cached, so training the head costs seconds.

The base is frozen, so its pooled outputs for an image never change: they are cached
per image content (md5), under a key naming the backbone weights, input size, taps and
preprocessing. A rerun of training reads them back instead of running ResNet50 again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras
from tqdm import tqdm

from lung_classifier.decoding.images import load_rgb
from lung_classifier.model.backbone import cache_dir
from lung_classifier.model.network import TAPS, pool
from lung_classifier.model.preprocessing import MODEL_INPUT_RESIZE, prepare_batch

BATCH = 32


def cache_key(weights_id: str, input_size: int, view: str = "plain") -> str:
    """Everything that changes a feature vector, hashed ("plain": image files by md5; "derived": prepared arrays)."""
    identity = {"weights": weights_id, "input_size": input_size, "taps": TAPS, "resample": MODEL_INPUT_RESIZE, "v": 1}
    if view != "plain":
        identity["view"] = view
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


class FeatureCache:
    """md5 -> feature vector, one .npz per cache key, plus the shards a distributed run writes as it goes.

    A shard (``<key>.shards/*.npz``) holds one batch's vectors, written as soon as a worker returns them,
    so a stopped run keeps what it computed; save() folds the shards into the one .npz.
    """

    def __init__(self, key: str, root: Path | None = None):
        self.path = (root or cache_dir() / "features") / f"{key}.npz"
        self.shards = self.path.with_suffix(".shards")
        self.vectors: dict[str, np.ndarray] = {}
        for stored_path in [self.path, *sorted(self.shards.glob("*.npz"))] if self.shards.is_dir() else [self.path]:
            if stored_path.is_file():
                with np.load(stored_path, allow_pickle=False) as stored:
                    self.vectors.update(zip(stored["md5"].tolist(), stored["features"]))

    def add_shard(self, md5s: list[str], vectors: np.ndarray) -> None:
        """Keep one batch's vectors, on disk at once (written aside, then renamed: whole or absent)."""
        self.shards.mkdir(parents=True, exist_ok=True)
        target = self.shards / f"{hashlib.sha256(''.join(md5s).encode()).hexdigest()[:20]}.npz"
        _write_npz(target, md5s, vectors)
        self.vectors.update(zip(md5s, vectors))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        md5s = sorted(self.vectors)
        _write_npz(self.path, md5s, np.stack([self.vectors[m] for m in md5s]))
        if self.shards.is_dir():
            shutil.rmtree(self.shards)


def _write_npz(path: Path, md5s: list[str], vectors: np.ndarray) -> None:
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, md5=np.array(md5s), features=vectors)
    temporary.replace(path)


@dataclass(frozen=True)
class Engine:
    """Where backbone features of image files are computed: this process, or Ray actors (training.features_ray)."""

    name: str = "local"  # "local" or "ray"
    address: str | None = None  # a running Ray cluster; None starts a local one
    workers: int | None = None  # Ray actors; None: as many as the cluster's CPUs
    worker_cpus: int = 1


def extract(extractor: keras.Model, paths: list[Path], md5s: list[str], input_size: int,
            cache: FeatureCache, engine: Engine = Engine()) -> np.ndarray:
    """Pooled backbone features for each image file, computing only what the cache lacks, in batches of BATCH
    in md5 order (so every engine sends the backbone the same batches)."""
    todo = sorted({md5: path for md5, path in zip(md5s, paths) if md5 not in cache.vectors}.items())
    if todo:
        chunks = [todo[first:first + BATCH] for first in range(0, len(todo), BATCH)]
        with tqdm(total=len(todo), desc="backbone features", unit="image", file=sys.stderr) as bar:
            if engine.name == "ray":
                from training.features_ray import extract_on_ray

                for chunk_md5s, vectors in extract_on_ray(extractor, chunks, input_size, engine):
                    cache.add_shard(chunk_md5s, vectors)
                    bar.update(len(chunk_md5s))
            else:
                features_of = features_function(extractor, input_size)
                for chunk in chunks:
                    for (md5, _), vector in zip(chunk, features_of(tf.constant(file_batch(chunk, input_size))).numpy()):
                        cache.vectors[md5] = vector
                    bar.update(len(chunk))
        cache.save()
    return np.stack([cache.vectors[md5] for md5 in md5s])


def features_function(extractor: keras.Model, input_size: int):
    """The pooled taps of a prepared batch, as one traced graph."""
    return tf.function(lambda images: pool(extractor(images)),
                       input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32)])


def file_batch(chunk: list[tuple[str, Path]], input_size: int) -> np.ndarray:
    """(md5, path) pairs -> the prepared batch of their decoded images."""
    return prepare_batch([load_rgb(path) for _, path in chunk], input_size)


class ArrayFeatures:
    """Pooled backbone features of prepared image arrays (shifted or partly deleted slices), cached by content.

    The deletion test and the OOD guard send hundreds of derived slices through the
    backbone; the base is frozen, so an array's features never change and a rerun of
    training reads them back (keyed by the md5 of the float32 pixels) instead of running
    ResNet50 again. Call save() when done.
    """

    def __init__(self, extractor: keras.Model, input_size: int, cache: FeatureCache):
        self.cache = cache
        self._features_of = features_function(extractor, input_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, np.float32)
        keys = [hashlib.md5(image.tobytes()).hexdigest() for image in images]
        todo = sorted({key: index for index, key in enumerate(keys) if key not in self.cache.vectors}.values())
        for first in range(0, len(todo), BATCH):
            chunk = todo[first:first + BATCH]
            for index, vector in zip(chunk, self._features_of(tf.constant(images[chunk])).numpy()):
                self.cache.vectors[keys[index]] = vector
        return np.stack([self.cache.vectors[key] for key in keys])

    def save(self) -> None:
        self.cache.save()

