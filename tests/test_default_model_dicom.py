"""The shipped default model on real DICOM (issues 17 and 23).

No DICOM training source has cancer, so no DICOM input is answered: the COVID-CT-MD series it was trained with
get no diagnosis (and never Malignant), and LIDC-IDRI-0001, a cancer patient's scan, is never answered Normal,
as DICOM, as a whole scan, or exported as PNG at windows inside the training range. A scan is never more
reassuring than its slices: a property over random subsets and supersets of real series' slice answers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA, require

COVID = SHARED_DATA.parent / "covidctmd"
LIDC = SHARED_DATA.parent / "lidc" / "LIDC-IDRI-0001"
IQ = SHARED_DATA / "The IQ-OTHNCCD lung cancer dataset"
EXPORT_WINDOWS = ((50.0, 350.0), (350.0, 900.0), (600.0, 1200.0))
"""(centre, width) HU: where issue 23 found another hospital's PNG exports answered Normal."""


@pytest.fixture(scope="module")
def classifier():
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained()


def reassured(analysis) -> bool:
    """What issue 23 calls "answered Normal": not flagged, label Normal, and malignancy ruled out."""
    return not analysis.out_of_distribution and analysis.label == "Normal" and analysis.malignancy_ruled_out


@pytest.mark.slow
@pytest.mark.parametrize("series", ["normal001", "P001", "cap001"])
def test_the_default_model_answers_no_covidctmd_scan_and_never_calls_one_malignant(classifier, series):
    require(COVID.is_dir(), f"COVID-CT-MD sample scans not found at {COVID} (../shared/data beside the repo)")
    result = classifier.analyze_scan(COVID / series)
    assert len(result.slices) == len(list((COVID / series).glob("*.dcm")))
    assert all(piece.position is not None for piece in result.slices)  # positions in mm along the body
    assert all(piece.analysis.out_of_distribution for piece in result.slices)  # no answer on DICOM is validated
    assert result.label is None and result.out_of_distribution and not result.malignancy_ruled_out
    assert sum(result.withheld_reasons.values()) == len(result.slices)
    assert any("DICOM" in reason for reason in result.withheld_reasons)


@pytest.mark.slow
def test_a_cancer_patients_dicom_scan_is_never_answered_normal(classifier):
    require(LIDC.is_dir(), f"LIDC-IDRI-0001 not found at {LIDC} (../shared/data beside the repo)")
    result = classifier.analyze_scan(LIDC)
    assert len(result.slices) == len(list(LIDC.glob("*.dcm")))
    assert result.label != "Normal" and not result.malignancy_ruled_out
    assert not [piece.name for piece in result.slices if reassured(piece.analysis)]
    record = result.as_dict()
    assert record["flagged_slices"] == len(result.slices) and record["flagged_reasons"]
    assert all(row["ood_reason"] for row in record["slices"])  # every flagged slice says why


@pytest.mark.slow
@pytest.mark.parametrize("window", EXPORT_WINDOWS, ids=lambda w: f"C{w[0]:g}-W{w[1]:g}")
def test_a_cancer_patients_slices_exported_as_png_are_never_answered_normal(classifier, window):
    require(LIDC.is_dir(), f"LIDC-IDRI-0001 not found at {LIDC} (../shared/data beside the repo)")
    from lung_classifier.decoding.images import load_rgb

    exports = []
    for path in sorted(LIDC.glob("*.dcm")):
        stream = io.BytesIO()
        Image.fromarray(load_rgb(path, dicom_window=window)).save(stream, format="PNG")
        exports.append(stream.getvalue())
    results = classifier.analyze_batch(exports)
    assert not [index for index, analysis in enumerate(results) if reassured(analysis)]
    flagged = [analysis for analysis in results if analysis.out_of_distribution]
    assert flagged and all("exported as an image" not in analysis.ood_reason for analysis in flagged)


def slice_answers(classifier, paths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    analyses = [outcome.analysis for outcome in classifier.analyze_many(paths) if outcome.analysis is not None]
    probabilities = np.array([[a.probabilities[label] for label in classifier.labels] for a in analyses])
    return (probabilities, np.array([a.out_of_distribution for a in analyses]),
            np.array([a.malignancy_ruled_out for a in analyses]))


@pytest.mark.slow
def test_adding_slices_of_real_series_never_turns_no_diagnosis_or_a_cancer_answer_into_normal(classifier):
    """Random subsets S of supersets T of real slices (COVID-CT-MD and LIDC DICOM, and IQ-OTH/NCCD images mixed as a
    pseudo-scan so that answers vary): whenever T is Normal, S is Normal or Benign."""
    require(COVID.is_dir() and LIDC.is_dir() and IQ.is_dir(), "the shared data (../shared/data) is needed")
    from lung_classifier.scan.aggregation import scan_answer
    from lung_classifier.scan.analysis import scan_rule

    rule = scan_rule(classifier)
    normals = sorted((IQ / "Normal cases").iterdir())[::12]
    cancers = sorted((IQ / "Malignant cases").iterdir())[::40]
    series = [slice_answers(classifier, sorted(p for p in (COVID / "normal001").glob("*.dcm"))[::3]),
              slice_answers(classifier, sorted(LIDC.glob("*.dcm"))[::4]),
              slice_answers(classifier, normals + cancers)]
    rng = np.random.default_rng(23)
    verdicts = set()
    for probabilities, withheld, ruled_out in series:
        for _ in range(200):
            superset = rng.random(len(withheld)) < rng.uniform(0.2, 1.0)
            subset = superset & (rng.random(len(withheld)) < rng.uniform(0.1, 1.0))
            if not subset.any():
                continue
            big, small = (scan_answer(rule, probabilities[m], withheld[m], ruled_out[m]) for m in (superset, subset))
            name = "no diagnosis" if big.label is None else rule.labels[big.label]
            verdicts.add(name)
            if name == "Normal":
                assert small.label is not None and rule.labels[small.label] in ("Normal", "Benign")
                assert big.malignancy_ruled_out and small.malignancy_ruled_out
    assert "no diagnosis" in verdicts and len(verdicts) > 1
