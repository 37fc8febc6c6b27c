"""An archive job: list SOURCE, skip what the journal holds, score the rest on an engine, publish the table.

The engines only schedule: each runs :class:`Scorer` (one loaded package) over the same
chunks of units, a local loop in this process or Ray Data actors across a cluster
(:mod:`.ray_engine`, imported only when chosen), and hands finished units back here to
be journalled as they come.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .journal import Journal
from .listing import IMAGE, SERIES, chunks, list_units, with_digest
from .rows import SLICE
from .scorer import Finished, ModelSpec, Scorer

ENGINES = ("local", "ray")
FLUSH_UNITS = 64
FLUSH_SECONDS = 30.0
"""The journal gets a part file every FLUSH_UNITS finished units or FLUSH_SECONDS, whichever comes first."""

@dataclass
class Summary:
    """What a run did, for the closing line and for tests."""

    units: int = 0
    skipped: int = 0  # already in the journal: not scored again
    scored: int = 0
    refused: int = 0  # units whose row is a refusal
    rows: int = 0  # rows in the published table
    seconds: float = 0.0
    engine_seconds: float = 0.0  # from the first chunk sent to the last unit back
    series: int = 0  # scored now
    slices: int = 0  # analysed now (slices of series, and images)


def run(source: str | Path, out: str | Path, spec: ModelSpec, engine: str = "local", *, address: str | None = None,
        workers: int | None = None, worker_cpus: int = 1, num_cpus: int | None = None, batch_size: int = 16,
        progress: bool = False) -> Summary:
    """Score every unit of SOURCE not yet in OUT's journal, then publish OUT from the whole journal."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    started = time.perf_counter()
    units = list_units(source)
    identity = spec.identity()
    journal = Journal(Path(out), str(identity["package_digest"]))
    done = journal.done()
    digested = [with_digest(unit) for unit in _bar(units, progress, "content digests", "unit")]
    todo = [unit for unit in digested if unit.digest not in done]
    summary = Summary(units=len(units), skipped=len(units) - len(todo))
    if todo:
        work = chunks(todo, batch_size)
        with _Recorder(journal, summary, len(todo), progress) as record:
            engine_started = time.perf_counter()
            if engine == "local":
                scorer = Scorer(spec, journal.package_digest, batch_size)
                for chunk in work:
                    record(scorer(chunk))
            else:
                from .ray_engine import run_ray

                run_ray(work, spec, identity, record, address=address, workers=workers,
                        worker_cpus=worker_cpus, num_cpus=num_cpus, batch_size=batch_size)
            summary.engine_seconds = time.perf_counter() - engine_started
    summary.rows = journal.publish()
    summary.seconds = time.perf_counter() - started
    return summary


class _Recorder:
    """Takes finished units from an engine: counts them, shows progress, journals them in part files."""

    def __init__(self, journal: Journal, summary: Summary, total: int, progress: bool):
        self.journal, self.summary = journal, summary
        self.pending: Finished = []
        self.flushed = time.monotonic()
        self.bar = _bar(None, progress, "archive", "unit", total)

    def __enter__(self) -> Callable[[Finished], None]:
        return self

    def __call__(self, finished: Finished) -> None:
        import json

        for _, _, text in finished:
            rows = json.loads(text)
            self.summary.scored += 1
            self.summary.refused += rows[0].get("refusal") is not None
            self.summary.series += rows[0]["kind"] == SERIES
            self.summary.slices += sum(row["kind"] in (SLICE, IMAGE) and row.get("refusal") is None for row in rows)
        self.pending += finished
        if self.bar is not None:
            self.bar.update(len(finished))
        if len(self.pending) >= FLUSH_UNITS or time.monotonic() - self.flushed >= FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        self.journal.write(self.pending)
        self.pending, self.flushed = [], time.monotonic()

    def __exit__(self, *exc) -> None:
        self._flush()  # what finished before a failure is kept: a rerun resumes after it
        if self.bar is not None:
            self.bar.close()


def _bar(items, progress: bool, desc: str, unit: str, total: int | None = None):
    """tqdm on stderr when asked (the CLI asks when stderr is a terminal); the items themselves otherwise."""
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr)
