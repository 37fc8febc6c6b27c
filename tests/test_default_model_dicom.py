"""The shipped default model on the COVID-CT-MD series it was trained with (issue 17): the healthy scan is
answered Normal (no cancer finding) and no scan is called Malignant, slice by slice and as a whole scan."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA, require

COVID = SHARED_DATA.parent / "covidctmd"


@pytest.fixture(scope="module")
def classifier():
    from lung_classifier import LungClassifier

    return LungClassifier.from_pretrained()


@pytest.mark.slow
@pytest.mark.parametrize("series", ["normal001", "P001", "cap001"])
def test_the_default_model_never_calls_a_covidctmd_scan_malignant(classifier, series):
    require(COVID.is_dir(), f"COVID-CT-MD sample scans not found at {COVID} (../shared/data beside the repo)")
    assert classifier.dicom_labels == ("Normal",)
    result = classifier.analyze_scan(COVID / series)
    assert len(result.slices) == len(list((COVID / series).glob("*.dcm")))
    assert all(piece.position is not None for piece in result.slices)  # positions in mm along the body
    answered = [piece.analysis for piece in result.slices if not piece.analysis.out_of_distribution]
    assert not [a for a in answered if a.label != "Normal"]  # a cancer finding on DICOM is never answered
    assert result.label != "Malignant"
    if series == "normal001":
        assert (result.label, result.out_of_distribution) == ("Normal", False)
        assert np.mean([piece.analysis.out_of_distribution for piece in result.slices]) <= 0.05
