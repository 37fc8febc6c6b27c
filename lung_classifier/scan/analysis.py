"""A whole scan -> per-slice results along the body, one scan verdict, and the slices that drove it.

The slices are decoded and analysed a batch at a time and only their results are kept
(no pixels), so a 1000-slice scan needs the memory of one batch plus 1000 small
results. The scan verdict comes from the package's whole-scan rule
(:mod:`.aggregation`, ``config["scan"]``), applied to the answered slices, and is never more
reassuring than the slices: a slice given no diagnosis, or one that does not rule malignancy
out, keeps the scan from being called Normal (aggregation.scan_answer); a scan with most slices
flagged gets no verdict. Every result says how many slices were flagged, and why.

A slice that cannot be decoded (damaged, an encoding not accepted) is skipped with a
note naming it, rather than failing the scan: one bad file among 300 should not hide
the other 299, and the note says the verdict was reached without it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..decoding.images import ImageInput, Slice
from ..decoding.series import ScanError, ScanSource, Series, SliceEntry, open_series
from ..batch import analyze_many
from ..package.format import PackageError
from ..verdict import OOD_NOTICE, Analysis, screening_answer
from .aggregation import MALIGNANT, MOST_WITHHELD, ScanRule, scan_answer

class SliceClassifier(Protocol):
    """What a scan needs of a classifier (LungClassifier is one): its package, and slices read and analysed."""

    labels: tuple[str, ...]
    config: dict[str, Any]
    source_name: str

    def read(self, image: ImageInput) -> Slice: ...

    def analyze_batch(self, images: Sequence[ImageInput | Slice], explain: bool = False) -> list[Analysis]: ...


UNNAMED = "the uploaded data"
"""How decoding.images.read_slice names bytes in its errors; a zip member's name replaces it in notes."""


@dataclass(frozen=True)
class ScanSlice:
    """One slice of a scan, in body order."""

    name: str  # the file or member base name only: never a server path
    position: float | None  # DICOM: mm along the slice normal; None for images
    index: int  # position in ScanResult.slices
    analysis: Analysis  # without heatmap

    @property
    def number(self) -> int:
        """The slice's number as people see it on the page, in the CLI and in the API's rows: 1-based, in body
        order (``index`` + 1)."""
        return self.index + 1


@dataclass(frozen=True)
class ScanResult:
    """A scan's per-slice results and its verdict.

    ``top`` holds indices into ``slices``: for a scan with a verdict, the slices that
    drove it most (ScanDecision.contributions: for a Normal verdict, the most suspicious
    slices, those closest to changing it); for a flagged scan, the slices least
    like the training slices (highest OOD score), which is what a person should look
    at to see why. ``heatmaps`` (explain=True only) maps those indices to Grad-CAM
    maps, float32 in [0, 1] at the slice's decoded size, and ``images`` to the slices
    as decoded (RGB uint8, the same size), for overlays: the scan keeps no other pixels.
    """

    slices: list[ScanSlice]
    label: str | None  # None when the scan is out of distribution
    probabilities: dict[str, float] | None  # scan level; None when out of distribution
    out_of_distribution: bool
    ood_reason: str | None
    top: list[int]
    heatmaps: dict[int, np.ndarray] = field(default_factory=dict)
    images: dict[int, np.ndarray] = field(default_factory=dict)  # the top slices' decoded RGB (explain=True)
    notes: list[str] = field(default_factory=list)  # what was skipped or refused, and why
    malignancy_ruled_out: bool = False  # only when every slice was answered and ruled malignancy out

    @property
    def verdict(self) -> str:
        """What to show a person: the scan label, or OOD_NOTICE when the scan is out of distribution."""
        return OOD_NOTICE if self.out_of_distribution else str(self.label)

    @property
    def screening(self) -> str:
        return screening_answer(self.malignancy_ruled_out)

    @property
    def withheld_reasons(self) -> dict[str, int]:
        """Why slices were given no diagnosis: each reason and how many slices it holds back, most first."""
        reasons = Counter(s.analysis.ood_reason for s in self.slices if s.analysis.out_of_distribution)
        return dict(reasons.most_common())

    @property
    def not_ruled_out(self) -> int:
        """Answered slices whose P(Malignant) is at or above their source's rule-out threshold."""
        return sum(1 for s in self.slices if not s.analysis.out_of_distribution and not s.analysis.malignancy_ruled_out)

    def flagged_summary(self) -> str:
        """How many slices were flagged and why, in one line every surface shows."""
        withheld = sum(self.withheld_reasons.values())
        text = f"{withheld} of {len(self.slices)} slices flagged (no diagnosis)"
        if withheld:
            text += ": " + "; ".join(f"{count} {reason}" for reason, count in self.withheld_reasons.items())
        return text + f"; {self.not_ruled_out} answered slices do not rule malignancy out"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the verdict, screening answer, scan probabilities, flagged slices and why, top slices, a row
        per slice, notes (no heatmaps)."""
        return {"verdict": self.verdict, "label": self.label, "malignancy_ruled_out": self.malignancy_ruled_out,
                "screening": self.screening, "probabilities": self.probabilities,
                "out_of_distribution": self.out_of_distribution, "ood_reason": self.ood_reason,
                "flagged_slices": sum(self.withheld_reasons.values()), "flagged_reasons": self.withheld_reasons,
                "slices_not_ruling_out": self.not_ruled_out, "top": self.top,
                "top_numbers": [self.slices[i].number for i in self.top],
                "slices": [slice_row(scan_slice) for scan_slice in self.slices], "notes": self.notes}


def slice_row(scan_slice: ScanSlice) -> dict[str, Any]:
    """One slice as a table row: ``index`` (0-based, into ``slices``) and ``number`` (1-based, as people see it);
    a flagged slice has no label (as Analysis.as_dict)."""
    analysis = scan_slice.analysis
    return {"index": scan_slice.index, "number": scan_slice.number, "name": scan_slice.name,
            "position": scan_slice.position, "label": None if analysis.out_of_distribution else analysis.label,
            "malignancy_ruled_out": analysis.malignancy_ruled_out, "probabilities": analysis.probabilities,
            "out_of_distribution": analysis.out_of_distribution, "ood_reason": analysis.ood_reason}


def scan_rule(classifier: SliceClassifier) -> ScanRule:
    """The package's whole-scan rule; a package trained before whole-scan analysis has none."""
    block = classifier.config.get("scan")
    if not block:
        raise PackageError(f"{classifier.source_name} predates whole-scan analysis (its config.json has "
                                   "no 'scan' block): retrain it with python -m training")
    return ScanRule.from_config(classifier.labels, block)


def analyze_scan(classifier: SliceClassifier, source: ScanSource, *, top_k: int = 3, explain: bool = False,
                 batch_size: int = 16, progress: Callable[[int, int], None] | None = None) -> ScanResult:
    """See LungClassifier.analyze_scan."""
    if top_k < 1 or batch_size < 1:
        raise ValueError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}")
    rule = scan_rule(classifier)
    with open_series(source) as series:
        slices, entries, notes = _analyze_slices(classifier, series, batch_size, progress)
        if not slices:
            raise ScanError("no slice of the upload could be decoded (" + "; ".join(notes) + "): upload the "
                            "DICOM files of one series, or the slice images")
        label, probabilities, flagged, reason, top, ruled_out = _decide(classifier, rule, slices, top_k)
        heatmaps, images = _explain(classifier, series, [entries[index] for index in top], top) if explain else ({}, {})
    return ScanResult(slices, label, probabilities, flagged, reason, top, heatmaps, images, notes, ruled_out)


def _analyze_slices(classifier: SliceClassifier, series: Series, batch_size: int,
                    progress: Callable[[int, int], None] | None
                    ) -> tuple[list[ScanSlice], list[SliceEntry], list[str]]:
    """Decode and analyse batch by batch, keeping only the results (and each analysed slice's entry)."""
    slices: list[ScanSlice] = []
    entries: list[SliceEntry] = []
    for outcome in analyze_many(classifier, series.slices, read=series.read, batch_size=batch_size,
                                progress=progress):
        entry = outcome.item
        if outcome.analysis is None:  # one bad slice does not hide the others: noted, and the scan goes on
            message = str(outcome.error).replace(entry.key, entry.name).replace(UNNAMED, entry.name, 1)  # no path
            series.notes.unreadable(entry.name, message)
            continue
        slices.append(ScanSlice(entry.name, entry.position, len(slices), outcome.analysis))
        entries.append(entry)
    return slices, entries, series.notes.render()


def _decide(classifier: SliceClassifier, rule: ScanRule, slices: list[ScanSlice], top_k: int
            ) -> tuple[str | None, dict[str, float] | None, bool, str | None, list[int], bool]:
    """(label, probabilities, no diagnosis, why, top slices, malignancy ruled out) by aggregation.scan_answer."""
    withheld = np.array([scan_slice.analysis.out_of_distribution for scan_slice in slices])
    ruled_out = np.array([scan_slice.analysis.malignancy_ruled_out for scan_slice in slices])
    every = np.array([[s.analysis.probabilities[label] for label in classifier.labels] for s in slices])
    found = scan_answer(rule, every, withheld, ruled_out)
    k = min(top_k, len(slices))
    if found.label is None:
        result = ScanResult(slices, None, None, True, None, [])
        if found.reason == MOST_WITHHELD:
            reason = (f"{found.withheld} of {len(slices)} slices were given no diagnosis (more than "
                      f"{rule.max_flagged_fraction:.0%}); most often: {next(iter(result.withheld_reasons))}")
            scores = np.array([scan_slice.analysis.ood_score for scan_slice in slices])
            return None, None, True, reason, [int(i) for i in np.argsort(-scores, kind="stable")[:k]], False
        reason = (f"its answered slices alone would say Normal, but {found.withheld} of {len(slices)} slices were "
                  f"given no diagnosis and {found.not_ruled_out} do not rule malignancy out: a scan is never more "
                  "reassuring than its slices; have it read by a specialist")
        order = np.argsort(-every[:, classifier.labels.index(MALIGNANT)], kind="stable")[:k]
        return None, None, True, reason, [int(i) for i in order], False
    kept = np.flatnonzero(~withheld)
    order = np.argsort(-found.decision.contributions, kind="stable")[:min(k, len(kept))]
    return (classifier.labels[found.label],
            {label: float(p) for label, p in zip(classifier.labels, found.decision.probabilities)},
            False, None, [int(kept[i]) for i in order], found.malignancy_ruled_out)


def _explain(classifier: SliceClassifier, series: Series, entries: list[SliceEntry],
             top: list[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Grad-CAM for the top slices only: re-read those few and explain them in one call."""
    decoded = [classifier.read(series.read(entry)) for entry in entries]
    explained = classifier.analyze_batch(decoded, explain=True)
    return ({index: analysis.heatmap for index, analysis in zip(top, explained)},
            {index: item.rgb for index, item in zip(top, decoded)})
