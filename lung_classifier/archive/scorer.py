"""What each engine runs: one loaded package (Scorer) turning chunks of units into their rows.

The model flags travel as a ModelSpec, so that each worker loads the package itself, and the
package's identity is checked there against the one the job started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..package import CONFIG, PackageError, parse_config, sha256_file
from .listing import Unit
from .rows import package_identity, score_chunk

if TYPE_CHECKING:
    from ..classifier import LungClassifier

Finished = list[tuple[str, str, str]]
"""Finished units as (unit name, unit digest, rows JSON): what an engine hands back."""


@dataclass(frozen=True)
class ModelSpec:
    """Which package to load, as the model flags say: sent to every worker, which loads it itself."""

    model: str | None = None
    revision: str | None = None
    trust_saved_model: bool = False
    precision: str = "auto"
    runtime: str = "auto"

    def load(self) -> LungClassifier:
        from ..classifier import LungClassifier

        return LungClassifier.from_pretrained(self.model, revision=self.revision,
                                              trust_saved_model=self.trust_saved_model, precision=self.precision,
                                              runtime=self.runtime)

    def identity(self) -> dict[str, str | None]:
        """The package's name, version and digest (the sha256 of its config.json) without loading it: no
        TensorFlow in the process that only schedules."""
        from ..classifier import resolve_source

        config = resolve_source(self.model, revision=self.revision).directory / CONFIG
        read = parse_config(config)
        return {"package_name": read.get("name"), "package_version": read.get("model_version"),
                "package_digest": sha256_file(config)}


class Scorer:
    """One loaded package scoring chunks of units: what the local loop runs, and what each Ray actor holds."""

    def __init__(self, spec: ModelSpec, expected_digest: str, batch_size: int = 16):
        self.classifier = spec.load()
        self.identity = package_identity(self.classifier)
        if self.identity["package_digest"] != expected_digest:  # a Hub revision moved while the job ran
            raise PackageError(f"the package loaded here ({self.identity['package_digest'][:12]}) is not the one the "
                               f"job was started with ({expected_digest[:12]}): pin --revision")
        self.batch_size = batch_size

    def __call__(self, chunk: list[Unit]) -> Finished:
        return [(unit.name, unit.digest, rows)
                for unit, rows in score_chunk(self.classifier, chunk, self.identity, self.batch_size)]
