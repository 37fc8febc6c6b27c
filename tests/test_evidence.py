"""Evidence per source (issue 23): rendering statistics, recognition, the one answer rule, and a scan that is
never more reassuring than its slices (a property over random subsets and supersets of slice answers)."""

from __future__ import annotations

import numpy as np
import pytest

from lung_classifier.decoding.images import Slice
from lung_classifier.evidence import STATISTICS, Recogniser, SourceEvidence, recognise, rendering_statistics
from lung_classifier.scan.aggregation import BLOCKS_NORMAL, MOST_WITHHELD, ScanRule, scan_answer
from lung_classifier.verdict import NON_AXIAL, UNLIKE_FEATURES, answer

LABELS = ("Normal", "Benign", "Malignant")


def source(name: str, centre: float, dicom: bool = False, validated: bool = True, rule_out: float = 0.2,
           temperature: float = 1.0) -> SourceEvidence:
    """A source whose statistics sit around ``centre`` (unit scale, identity precision, threshold 1)."""
    r = len(STATISTICS)
    recogniser = Recogniser(np.full(r, centre), np.ones(r), np.eye(r), 1.0)
    return SourceEvidence(name, name.upper(), dicom, recogniser, temperature, np.zeros(3), rule_out, validated)


def test_rendering_statistics_tell_a_jpeg_like_stretched_export_from_a_full_range_one():
    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(120, 30, (64, 64)), 0, 255).astype(np.uint8)
    stretched = (smooth // 2 * 2).astype(np.uint8)  # every other grey level: a stretched 8-bit export
    full, gappy = (rendering_statistics(np.repeat(a[..., None], 3, axis=2)) for a in (smooth, stretched))
    assert full.shape == (len(STATISTICS),) and np.isfinite(full).all()
    levels = STATISTICS.index("grey levels used")
    assert gappy[levels] < 0.6 < full[levels]


def test_an_input_is_recognised_as_the_nearest_source_of_its_kind_within_its_threshold():
    sources = [source("a", 0.0), source("b", 0.5), source("d", 0.0, dicom=True)]
    near_b = np.full(len(STATISTICS), 0.45)
    assert recognise(sources, near_b, dicom=False).source.name == "b"
    assert recognise(sources, np.zeros(len(STATISTICS)), dicom=True).source.name == "d"  # only DICOM sources
    far = recognise(sources, np.full(len(STATISTICS), 5.0), dicom=False)
    assert far.source is None and set(far.ratios) == {"a", "b"} and min(far.ratios.values()) > 1


@pytest.mark.parametrize("p_malignant, ruled_out", [(0.05, True), (0.2, False), (0.5, False)])
def test_the_label_is_the_most_probable_class_and_the_screening_answer_is_separate(p_malignant, ruled_out):
    sources = [source("a", 0.0)]
    recognition = recognise(sources, np.zeros(len(STATISTICS)), dicom=False)
    p = np.array([1 - p_malignant - 0.01, 0.01, p_malignant])
    shown, label, ruled, reason = answer(p, LABELS, Slice(np.zeros((4, 4, 3), np.uint8)), recognition, sources, False)
    assert reason is None and label == LABELS[int(np.argmax(shown))] and ruled is ruled_out
    np.testing.assert_allclose(shown, p)  # identity calibration


def test_every_reason_to_withhold_rules_nothing_out_and_names_the_real_reason():
    sources = [source("a", 0.0), source("covid", 0.0, dicom=True, validated=False, rule_out=0.0)]
    p = np.array([0.98, 0.01, 0.01])
    image, axial, reformatted = (Slice(np.zeros((4, 4, 3), np.uint8), dicom=d, axial=ax)
                                 for d, ax in ((False, None), (True, True), (True, False)))
    zeros, far = np.zeros(len(STATISTICS)), np.full(len(STATISTICS), 9.0)
    cases = [(image, far, False, "like none of the sources this model was validated on (A)"),
             (image, zeros, True, UNLIKE_FEATURES),
             (reformatted, zeros, False, NON_AXIAL),
             (axial, zeros, False, "like COVID, a training source without validated cancers"),
             (axial, far, False, "none of this model's DICOM training sources has validated cancers")]
    for decoded, statistics, flag, expected in cases:
        _, label, ruled, reason = answer(p, LABELS, decoded, recognise(sources, statistics, decoded.dicom), sources,
                                         flag)
        assert label == "Normal" and ruled is False and expected in reason
        assert "exported as an image" not in reason


def test_a_source_calibration_moves_the_bars_and_the_label_with_them():
    sources = [SourceEvidence("a", "A", False, source("a", 0.0).recogniser, 1.0, np.array([0.0, 0.0, 2.0]), 0.2, True)]
    recognition = recognise(sources, np.zeros(len(STATISTICS)), dicom=False)
    shown, label, ruled, _ = answer(np.array([0.6, 0.1, 0.3]), LABELS, Slice(np.zeros((4, 4, 3), np.uint8)),
                                    recognition, sources, False)
    assert label == "Malignant" == LABELS[int(np.argmax(shown))] and not ruled


RULE = ScanRule(LABELS, "mean_logit", offsets=np.array([0.0, 1.5, 1.25]))


def slices_of(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probabilities = rng.dirichlet([3.0, 1.0, 1.0], size=n)
    withheld = rng.random(n) < 0.1
    ruled_out = ~withheld & (probabilities[:, 2] < 0.25)
    return probabilities, withheld, ruled_out


def verdict(found) -> str:
    return "no diagnosis" if found.label is None else LABELS[found.label]


def test_a_scan_is_normal_only_when_every_slice_was_answered_and_ruled_malignancy_out():
    p = np.array([[0.9, 0.05, 0.05]] * 5)
    assert verdict(scan_answer(RULE, p, np.zeros(5, bool), np.ones(5, bool))) == "Normal"
    one_withheld = scan_answer(RULE, p, np.eye(5, dtype=bool)[0], ~np.eye(5, dtype=bool)[0])
    assert (one_withheld.label, one_withheld.reason, one_withheld.withheld) == (None, BLOCKS_NORMAL, 1)
    one_unsure = scan_answer(RULE, p, np.zeros(5, bool), ~np.eye(5, dtype=bool)[0])
    assert (one_unsure.label, one_unsure.not_ruled_out, one_unsure.malignancy_ruled_out) == (None, 1, False)
    most = scan_answer(RULE, p, np.arange(5) < 3, np.arange(5) >= 3)
    assert (most.label, most.reason) == (None, MOST_WITHHELD)


def test_adding_slices_never_turns_no_diagnosis_or_a_cancer_answer_into_normal():
    """Property: for random slice answers and random nested subsets S of T, T Normal implies S is Normal or
    Benign (never no diagnosis, never Malignant); and every Normal scan rules malignancy out."""
    rng = np.random.default_rng(23)
    seen = set()
    for _ in range(400):
        probabilities, withheld, ruled_out = slices_of(rng, int(rng.integers(1, 30)))
        superset = scan_answer(RULE, probabilities, withheld, ruled_out)
        seen.add(verdict(superset))
        for _ in range(5):
            keep = rng.random(len(probabilities)) < rng.random()
            if not keep.any():
                continue
            subset = scan_answer(RULE, probabilities[keep], withheld[keep], ruled_out[keep])
            if verdict(superset) == "Normal":
                assert superset.malignancy_ruled_out
                assert verdict(subset) in ("Normal", "Benign")
    assert {"Normal", "no diagnosis"} <= seen  # the property was exercised on both sides
