"""From per-slice probabilities to one scan-level answer, by the rule training chose.

A scan is abnormal where some of its slices are: a tumour shows on a few slices of a
hundred, so averaging would drown it. Each rule pools the slices' calibrated
probabilities into one evidence value per class; a scan-level temperature and bias
(fitted on out-of-fold scans) turn the evidence into probabilities, and the same
Malignant-first decision rule as for slices picks the label. A scan with any
confidently malignant slice is never called Normal, whatever the pooled evidence says: it is
called Malignant. On top of the pooled rule, :func:`scan_answer` keeps a scan from being more
reassuring than its slices (a withheld or unsure slice blocks Normal).

Rules (``pool``):
- ``max``: the most suspicious slice decides each abnormal class;
- ``top_k_mean``: the mean of the k most suspicious slices (less sensitive to one outlier);
- ``noisy_or``: P(at least one slice shows the class), slices taken as independent;
- ``mean_logit``: the mean of the slices' log probabilities (the "average slice").
For the pooled rules the Normal evidence is the complement of the pooled abnormality:
a scan is Normal only where no slice looks abnormal.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..verdict import decide

POOLS = ("max", "top_k_mean", "noisy_or", "mean_logit")
NORMAL = "Normal"
MALIGNANT = "Malignant"
CONFIDENT_MALIGNANT = 0.9
"""A slice with calibrated P(Malignant) at or above this keeps its scan from being called Normal."""
MAX_FLAGGED_FRACTION = 0.5
"""A scan is out of distribution when more than this fraction of its slices are: no scan verdict then.
Training writes it into the package's scan block; this default serves packages written before it was."""
EPS = 1e-6


@dataclass(frozen=True)
class ScanDecision:
    """One scan's answer from its in-distribution slices."""

    label: int  # index into the labels
    probabilities: np.ndarray  # (C,) scan-level, calibrated
    contributions: np.ndarray  # (n,) how much each slice drove the label: rank by this for "top slices"


@dataclass(frozen=True)
class ScanRule:
    """A pooling rule and its scan-level calibration and decision offsets."""

    labels: tuple[str, ...]
    pool: str
    k: int = 1
    temperature: float = 1.0
    bias: np.ndarray | None = None  # (C,) added after the temperature; zeros if None
    offsets: np.ndarray | None = None  # (C,) label = argmax(log p + offsets); zeros if None
    confident_malignant: float = CONFIDENT_MALIGNANT
    max_flagged_fraction: float = MAX_FLAGGED_FRACTION

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown scan pooling rule {self.pool!r}: expected one of {', '.join(POOLS)}")
        if NORMAL not in self.labels or MALIGNANT not in self.labels:
            raise ValueError(f"scan rules need {NORMAL} and {MALIGNANT} among the labels, got {self.labels}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if not 0.0 <= self.max_flagged_fraction < 1.0:
            raise ValueError(f"max_flagged_fraction must be in [0, 1), got {self.max_flagged_fraction}")

    def describe(self) -> str:
        return f"top-{self.k} mean" if self.pool == "top_k_mean" else self.pool.replace("_", " ")

    def flagged(self, slice_flags: np.ndarray) -> bool:
        """Whether a scan gets no verdict; otherwise its verdict comes from its in-distribution slices only."""
        flags = np.asarray(slice_flags, bool)
        return bool(len(flags) == 0 or flags.mean() > self.max_flagged_fraction)

    def evidence(self, probabilities: np.ndarray) -> np.ndarray:
        """(C,) log evidence per class from (n, C) slice probabilities; n >= 1."""
        p = np.clip(np.asarray(probabilities, np.float64), EPS, 1.0 - EPS)
        if p.ndim != 2 or p.shape[1] != len(self.labels) or len(p) == 0:
            raise ValueError(f"expected (n >= 1, {len(self.labels)}) slice probabilities, got {p.shape}")
        if self.pool == "mean_logit":
            return np.log(p).mean(axis=0)
        normal = self.labels.index(NORMAL)
        abnormal = 1.0 - p[:, normal]
        pooled = np.array([self._pool(abnormal if c == normal else p[:, c]) for c in range(p.shape[1])])
        pooled[normal] = 1.0 - pooled[normal]  # Normal only where no slice looks abnormal
        return np.log(np.clip(pooled, EPS, 1.0))

    def _pool(self, values: np.ndarray) -> float:
        if self.pool == "max":
            return float(values.max())
        if self.pool == "top_k_mean":
            return float(np.sort(values)[-self.k:].mean())
        return float(1.0 - np.exp(np.log1p(-values).sum()))  # noisy-OR

    def probabilities(self, evidence: np.ndarray) -> np.ndarray:
        """Scan-level probabilities from (..., C) evidence: softmax(evidence / T + bias)."""
        bias = np.zeros(len(self.labels)) if self.bias is None else np.asarray(self.bias, np.float64)
        z = np.asarray(evidence, np.float64) / self.temperature + bias
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def label(self, scan_probabilities: np.ndarray, slice_probabilities: np.ndarray) -> int:
        """The decision rule, then the guarantee: a scan it calls Normal despite a confidently malignant
        slice is called Malignant, the class that slice argues for."""
        offsets = np.zeros(len(self.labels)) if self.offsets is None else np.asarray(self.offsets, np.float64)
        label = int(decide(scan_probabilities, offsets))
        malignant, normal = self.labels.index(MALIGNANT), self.labels.index(NORMAL)
        if label == normal and np.max(slice_probabilities[:, malignant]) >= self.confident_malignant:
            return malignant
        return label

    def decide(self, slice_probabilities: np.ndarray) -> ScanDecision:
        """The scan's label and probabilities, and each slice's contribution to that label."""
        p = np.asarray(slice_probabilities, np.float64)
        scan = self.probabilities(self.evidence(p))
        label = self.label(scan, p)
        normal = self.labels.index(NORMAL)
        # A Normal verdict is driven by its most suspicious slices: the ones that came closest to changing it.
        contributions = 1.0 - p[:, normal] if label == normal else p[:, label]
        return ScanDecision(label, scan, contributions)

    def as_config(self) -> dict[str, Any]:
        return {"pool": self.pool, "k": self.k, "temperature": self.temperature,
                "bias": dict(zip(self.labels, _floats(self.bias, len(self.labels)))),
                "offsets": dict(zip(self.labels, _floats(self.offsets, len(self.labels)))),
                "confident_malignant": self.confident_malignant, "max_flagged_fraction": self.max_flagged_fraction}

    @classmethod
    def from_config(cls, labels: tuple[str, ...], block: Mapping[str, Any]) -> "ScanRule":
        """The package's ``config["scan"]`` block (one without max_flagged_fraction predates it: the default)."""
        return cls(labels=tuple(labels), pool=str(block["pool"]), k=int(block["k"]),
                   temperature=float(block["temperature"]),
                   bias=np.array([float(block["bias"][label]) for label in labels]),
                   offsets=np.array([float(block["offsets"][label]) for label in labels]),
                   confident_malignant=float(block["confident_malignant"]),
                   max_flagged_fraction=float(block.get("max_flagged_fraction", MAX_FLAGGED_FRACTION)))


def _floats(values: np.ndarray | None, n: int) -> list[float]:
    return [0.0] * n if values is None else [float(v) for v in values]


@dataclass(frozen=True)
class ScanAnswer:
    """A scan's answer from its slices' answers: never more reassuring than they are."""

    label: int | None  # None: no diagnosis
    decision: ScanDecision | None  # the pooled rule's, over the answered slices (None when most are withheld)
    malignancy_ruled_out: bool
    withheld: int  # slices given no diagnosis
    not_ruled_out: int  # answered slices whose P(Malignant) is at or above their source's rule-out threshold
    reason: str | None  # why the scan gets no diagnosis: "most slices withheld" or "slices block Normal"


MOST_WITHHELD = "most slices withheld"
BLOCKS_NORMAL = "slices block Normal"


def scan_answer(rule: ScanRule, probabilities: np.ndarray, withheld: np.ndarray,
                ruled_out: np.ndarray) -> ScanAnswer:
    """The scan rule over the slices' answers, monotone in the slices.

    - More than ``max_flagged_fraction`` of the slices withheld: no diagnosis.
    - A slice withheld (for any reason: each could hide a cancer) or answered without ruling malignancy out
      blocks a Normal verdict: the pooled rule's label stands if it is not Normal, else no diagnosis.
    - Every slice answered and ruling malignancy out: the pooled rule's label among the classes other than
      Malignant (Normal or Benign), and malignancy is ruled out for the scan.
    So a Normal scan has every slice answered and ruled out, which every subset of it has too: adding
    slices never turns no diagnosis or a cancer answer into Normal. ``probabilities`` (n, C), ``withheld``
    and ``ruled_out`` (n,) are every slice's, withheld ones included.
    """
    withheld, ruled_out = np.asarray(withheld, bool), np.asarray(ruled_out, bool)
    counts = dict(withheld=int(withheld.sum()), not_ruled_out=int((~withheld & ~ruled_out).sum()))
    if rule.flagged(withheld):
        return ScanAnswer(None, None, False, reason=MOST_WITHHELD, **counts)
    decision = rule.decide(np.asarray(probabilities, np.float64)[~withheld])
    normal, malignant = rule.labels.index(NORMAL), rule.labels.index(MALIGNANT)
    if counts["withheld"] or counts["not_ruled_out"]:
        if decision.label == normal:
            return ScanAnswer(None, decision, False, reason=BLOCKS_NORMAL, **counts)
        return ScanAnswer(decision.label, decision, False, reason=None, **counts)
    label = decision.label
    if label == malignant:  # every slice ruled malignancy out: the scan cannot argue for it
        others = [c for c in range(len(rule.labels)) if c != malignant]
        label = others[int(np.argmax(decision.probabilities[others]))]
    return ScanAnswer(label, decision, True, reason=None, **counts)
