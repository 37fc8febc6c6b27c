"""Backbone features of image files on Ray Data actors: the same batches, the same traced graph, another process.

Imported only for ``python -m training ... --engine ray``. Each actor rebuilds the extractor
from its Keras config and weights (sent once through Ray's object store: the tiny test
backbone and ResNet50 alike) and runs training.features' own graph on the same batches of
32 files in md5 order, so its vectors are the local ones; one worker with the local
process's thread count gives them bit for bit. Vectors come back batch by batch and the
caller writes each batch to the cache as a shard at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lung_classifier.archive.ray_engine import ray_session
from training.features import Engine


class FeatureWorker:
    """Ray Data's callable class: one rebuilt extractor per actor; one batch is one chunk of (md5, path)."""

    def __init__(self, config: str, weights: list[np.ndarray], input_size: int, threads: int):
        import keras
        import tensorflow as tf

        from training.features import features_function

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        extractor = keras.models.model_from_json(config)
        extractor.set_weights(weights)
        self.features_of = features_function(extractor, input_size)
        self.input_size = input_size

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        import tensorflow as tf

        from training.features import file_batch

        chunk = [(md5, Path(path)) for md5, path in json.loads(str(batch["chunk"][0]))]
        vectors = self.features_of(tf.constant(file_batch(chunk, self.input_size))).numpy()
        return {"md5": np.array([md5 for md5, _ in chunk]), "features": vectors}


def extract_on_ray(extractor, chunks: list[list[tuple[str, Path]]], input_size: int,
                   engine: Engine) -> Iterator[tuple[list[str], np.ndarray]]:
    """Each chunk's md5s and vectors, as the actors finish them (any order)."""
    import ray.data

    with ray_session(engine.address) as ray:
        pool = engine.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // engine.worker_cpus)
        items = ray.data.from_items([{"chunk": json.dumps([(md5, str(path)) for md5, path in chunk])}
                                     for chunk in chunks], override_num_blocks=len(chunks))
        options = {"config": extractor.to_json(), "weights": extractor.get_weights(),
                   "input_size": input_size, "threads": engine.worker_cpus}
        vectors = items.map_batches(FeatureWorker, batch_size=1, batch_format="numpy", fn_constructor_kwargs=options,
                                    compute=ray.data.ActorPoolStrategy(size=min(pool, len(chunks))),
                                    num_cpus=engine.worker_cpus)
        for batch in vectors.iter_batches(batch_size=None, batch_format="numpy"):
            yield [str(md5) for md5 in batch["md5"]], np.asarray(batch["features"])
