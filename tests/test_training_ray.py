"""Training's backbone features on Ray Data actors: the local features, and a cache written as shards."""

from __future__ import annotations

import hashlib

import numpy as np
from conftest import TINY_SIZE, tiny_backbone, usable_cores

from lung_classifier.model.network import build_extractor
from training import features
from training.features import Engine, FeatureCache


def test_ray_gives_the_local_features(local_ray, synthetic_dataset, tmp_path):
    extractor = build_extractor(tiny_backbone())
    paths = sorted(path for path in synthetic_dataset.rglob("*") if path.is_file())
    md5s = [hashlib.md5(path.read_bytes()).hexdigest() for path in paths]
    local = features.extract(extractor, paths, md5s, TINY_SIZE, FeatureCache("tiny", tmp_path / "local"))
    cache = FeatureCache("tiny", tmp_path / "ray")
    one_worker = features.extract(extractor, paths, md5s, TINY_SIZE, cache,
                                  Engine("ray", workers=1, worker_cpus=usable_cores()))
    assert np.array_equal(one_worker, local)  # the same batches, graph and thread count (TF's default): bit for bit
    assert cache.path.is_file() and not cache.shards.exists()  # the shards folded into the one file
    assert np.array_equal(np.stack([FeatureCache("tiny", tmp_path / "ray").vectors[md5] for md5 in md5s]), local)
    two_workers = features.extract(extractor, paths, md5s, TINY_SIZE, FeatureCache("tiny", tmp_path / "two"),
                                   Engine("ray", workers=2, worker_cpus=1))
    np.testing.assert_allclose(two_workers, local, rtol=1e-5, atol=1e-6)  # 1 thread each: float32 rounding only


def test_a_stopped_run_keeps_its_shards(tmp_path):
    cache = FeatureCache("key", tmp_path)
    cache.add_shard(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    reread = FeatureCache("key", tmp_path)  # as a rerun after a stop finds it
    assert sorted(reread.vectors) == ["a", "b"] and np.array_equal(reread.vectors["b"], [3, 4, 5])
    reread.save()
    assert not reread.shards.exists() and sorted(FeatureCache("key", tmp_path).vectors) == ["a", "b"]
