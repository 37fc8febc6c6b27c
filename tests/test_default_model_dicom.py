"""The shipped default model on the COVID-CT-MD series it was trained with (issue 17): the healthy scan is
answered Normal (no cancer finding) and no scan is called Malignant, slice by slice and as a whole scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, require

COVID = SHARED_DATA.parent / "covidctmd"


def covid_slices(series: str):
    """The series' slices at the package window, as DICOM slices (training.multisource's reader: see it)."""
    from lung_classifier.decoding.images import Slice
    from lung_classifier.decoding.rendering import DICOM_WINDOW
    from training.multisource import read_dicom_hu, render

    files = sorted((COVID / series).glob("*.dcm"))
    return files, [Slice(render(read_dicom_hu(path), DICOM_WINDOW), dicom=True, axial=True) for path in files]


@pytest.fixture(scope="module")
def classifier():
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained()


@pytest.mark.slow
@pytest.mark.parametrize("series", ["normal001", "P001", "cap001"])
def test_the_default_model_never_calls_a_covidctmd_scan_malignant(classifier, series):
    require(COVID.is_dir(), f"COVID-CT-MD sample scans not found at {COVID} (../shared/data beside the repo)")
    from lung_classifier.scan.analysis import ScanSlice, _decide, scan_rule

    assert classifier.dicom_labels == ("Normal",)
    files, slices = covid_slices(series)
    analyses = classifier.analyze_batch(slices)
    answered_malignant = [a for a in analyses if not a.out_of_distribution and a.label == "Malignant"]
    assert not answered_malignant  # a cancer finding on DICOM is never answered
    scan = [ScanSlice(path.name, None, index, analysis) for index, (path, analysis) in enumerate(zip(files, analyses))]
    label, _, flagged, reason, _ = _decide(classifier, scan_rule(classifier), scan, 3, dicom=True)
    assert label != "Malignant"
    if series == "normal001":
        assert (label, flagged, reason) == ("Normal", False, None)
        assert np.mean([a.out_of_distribution for a in analyses]) <= 0.05
