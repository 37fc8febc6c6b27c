"""The Ray engine: Ray Data sends the chunks to a pool of actors, each holding one loaded package (job.Scorer).

Imported only when ``--engine ray`` is chosen, so nothing else needs Ray. Ray starts its
own worker processes (never a fork of a process that holds TensorFlow); each actor loads
the package once and scores whole chunks, the same chunks the local loop scores, so the
rows are the same. A unit that cannot be analysed is already a refused row inside its
chunk; only a dying process (a crash in native decoding code, memory) reaches Ray, which
restarts the actor and retries the chunk ``MAX_RETRIES`` times. A chunk that still fails
is dropped by Ray Data (``max_errored_blocks``) and its units are tried once more one by
one, so that a crashing file becomes its own refused row and the job goes on. An actor holds one
chunk at a time, so a crash never takes another chunk down with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .scorer import Finished, ModelSpec, Scorer
from .listing import Unit
from .rows import refusal_rows

MAX_RETRIES = 3
"""Retries of a chunk whose worker died, before the chunk is given up (a dead actor is always restarted: with
a finite restart budget Ray Data's pool waits forever for an actor that is gone)."""
PASSED_ENVIRONMENT = ("LUNG_CLASSIFIER_CACHE", "LUNG_CLASSIFIER_RESNET50_WEIGHTS", "HF_HOME", "HF_HUB_OFFLINE",
                      "TF_CPP_MIN_LOG_LEVEL")
"""What the workers need of this process's environment: where rebuilt packages and weights are, Hub settings."""


class ChunkScorer:
    """Ray Data's callable class: one package per actor; one batch is one chunk of units (JSON)."""

    def __init__(self, spec: ModelSpec, expected_digest: str, batch_size: int, threads: int):
        from ..model import onnx_runtime
        from ..model.precision import uses_tensorflow

        onnx_runtime.THREADS = threads  # the actor's CPUs, not the machine's
        if uses_tensorflow(spec.precision, spec.runtime, spec.trust_saved_model):
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        self.scorer = Scorer(spec, expected_digest, batch_size)

    def __call__(self, batch: dict) -> dict[str, list[str]]:
        finished: Finished = [done for text in batch["chunk"]
                              for done in self.scorer([Unit.from_dict(unit) for unit in json.loads(str(text))])]
        return {"unit": [name for name, _, _ in finished], "unit_digest": [digest for _, digest, _ in finished],
                "rows": [rows for _, _, rows in finished]}


def run_ray(work: list[list[Unit]], spec: ModelSpec, identity: dict[str, Any], record: Callable[[Finished], None],
            *, address: str | None = None, workers: int | None = None, num_cpus: int | None = None,
            worker_cpus: int = 1, batch_size: int = 16) -> None:
    """Score every chunk on Ray: joins ``address`` (a running cluster) or starts a local one of ``num_cpus``
    (and stops it after); ``workers`` actors (default: as many as the cluster's CPUs hold), ``worker_cpus`` each."""
    import ray.data

    with ray_session(address, num_cpus) as ray:
        context = ray.data.DataContext.get_current()
        tolerated = context.max_errored_blocks
        context.max_errored_blocks = -1  # a chunk whose worker keeps dying is dropped, not the whole job
        try:
            pool = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // worker_cpus)
            options = {"spec": spec, "expected_digest": identity["package_digest"], "batch_size": batch_size,
                       "threads": worker_cpus}
            lost = _score(work, options, pool, worker_cpus, record)
            alone = [[unit] for chunk in lost for unit in chunk]
            if len(alone) > len(lost):  # a chunk of images: retry each alone, so only the crashing file is lost
                lost = _score(alone, options, pool, worker_cpus, record)
            record([(unit.name, unit.digest, refusal_rows(unit, identity, _crashed()))
                    for chunk in lost for unit in chunk])
        finally:
            context.max_errored_blocks = tolerated


LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Set before ``import ray`` for a cluster started here: Ray then binds its services to 127.0.0.1 instead of the
machine's network address (it maps even an explicit ``_node_ip_address="127.0.0.1"`` to that address), which a
one-machine job has no reason to expose. Read by Ray once, at import."""


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """``ray`` connected: to the one this process already has, to ``address`` (a running cluster, e.g. "auto" or
    "ray://head:10001"), or to a local cluster of ``num_cpus`` started here and stopped after."""
    if address is None:
        for name, value in LOOPBACK_ONLY.items():
            os.environ.setdefault(name, value)
    import ray

    if ray.is_initialized():
        yield ray
        return
    environment = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
    ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
             runtime_env={"env_vars": environment}, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _score(work: list[list[Unit]], options: dict[str, Any], pool: int, worker_cpus: int,
           record: Callable[[Finished], None]) -> list[list[Unit]]:
    """One pass of Ray Data over the chunks; returns the chunks that came back from no worker."""
    import ray.data

    chunks = ray.data.from_items([{"chunk": json.dumps([unit.as_dict() for unit in chunk])} for chunk in work],
                                 override_num_blocks=len(work))
    scored = chunks.map_batches(ChunkScorer, batch_size=1, batch_format="numpy", fn_constructor_kwargs=options,
                                compute=ray.data.ActorPoolStrategy(size=min(pool, len(work)),
                                                                   max_tasks_in_flight_per_actor=1),
                                num_cpus=worker_cpus,
                                max_restarts=-1, max_task_retries=MAX_RETRIES)
    returned: set[str] = set()
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        finished = [(str(name), str(digest), str(rows))
                    for name, digest, rows in zip(batch["unit"], batch["unit_digest"], batch["rows"])]
        returned.update(name for name, _, _ in finished)
        record(finished)
    return [chunk for chunk in work if chunk[0].name not in returned]


def _crashed() -> str:
    return (f"not analysed: the worker process died each time it read this file ({MAX_RETRIES + 1} tries; a crash "
            "in native decoding code, or out of memory)")
