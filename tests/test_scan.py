"""LungClassifier.analyze_scan on the tiny package: order, verdict by the package's rule, streaming, heatmaps."""

from __future__ import annotations

import dataclasses
import json
import weakref
import zipfile

import numpy as np
import pytest
from conftest import synthetic_slice

from lung_classifier import LungClassifier, PackageError, ScanError
from lung_classifier.scan.aggregation import ScanRule
from lung_classifier.verdict import OOD_NOTICE
from testkit.dicom_files import series_slice

# Scan 3 of each class (slices 11-15 of the synthetic set), named so that file-name order matters.
SCAN = [("Normal", 11), ("Normal", 12), ("Malignant", 13), ("Malignant", 14), ("Normal", 15),
        ("Normal", 11), ("Malignant", 12), ("Normal", 13), ("Normal", 14), ("Normal", 15)]


@pytest.fixture(scope="module")
def classifier(tiny_package) -> LungClassifier:
    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scan")
    for number, (label, index) in enumerate(SCAN, start=1):
        synthetic_slice(label, index).save(folder / f"case ({number}).png")
    return folder


def test_a_folder_scan_gives_slices_in_name_order_and_the_packages_scan_verdict(classifier, scan_folder):
    result = classifier.analyze_scan(scan_folder, top_k=3)
    assert [piece.name for piece in result.slices] == [f"case ({n}).png" for n in range(1, len(SCAN) + 1)]
    assert [piece.index for piece in result.slices] == list(range(len(SCAN)))
    assert all(piece.position is None and piece.analysis.heatmap is None for piece in result.slices)
    # Each slice's analysis is the single-slice one.
    alone = classifier.analyze_batch(sorted(scan_folder.iterdir(), key=lambda p: int(p.stem[6:-1])))
    for piece, expected in zip(result.slices, alone):
        assert piece.analysis.label == expected.label
        np.testing.assert_allclose(list(piece.analysis.probabilities.values()),
                                   list(expected.probabilities.values()), atol=1e-5)
    # The verdict, probabilities and top slices are the package's rule applied to the in-distribution slices.
    rule = ScanRule.from_config(classifier.labels, classifier.config["scan"])
    kept = [piece for piece in result.slices if not piece.analysis.out_of_distribution]
    assert len(kept) * 2 >= len(SCAN), "the synthetic scan should be mostly in distribution"
    decision = rule.decide(np.array([list(piece.analysis.probabilities.values()) for piece in kept]))
    assert not result.out_of_distribution and result.ood_reason is None
    assert result.label == classifier.labels[decision.label] == result.verdict
    np.testing.assert_allclose(list(result.probabilities.values()), decision.probabilities)
    assert result.top == [kept[i].index for i in np.argsort(-decision.contributions, kind="stable")[:3]]
    assert result.label == "Malignant"  # three clearly malignant slices among normal ones
    assert {result.slices[i].analysis.label for i in result.top} == {"Malignant"}
    assert result.heatmaps == result.images == {}


def test_as_dict_is_json_ready_and_shows_names_only(classifier, scan_folder):
    record = json.loads(json.dumps(classifier.analyze_scan(scan_folder).as_dict()))
    assert set(record) == {"verdict", "label", "malignancy_ruled_out", "screening", "probabilities",
                           "out_of_distribution", "ood_reason", "flagged_slices", "flagged_reasons",
                           "slices_not_ruling_out", "top", "top_numbers", "slices", "notes"}
    assert len(record["slices"]) == len(SCAN)
    row = record["slices"][0]
    assert set(row) == {"index", "number", "name", "position", "label", "malignancy_ruled_out", "probabilities",
                        "out_of_distribution", "ood_reason"}
    assert [row["number"] for row in record["slices"]] == [row["index"] + 1 for row in record["slices"]]
    assert record["top_numbers"] == [record["slices"][i]["number"] for i in record["top"]]
    assert row["name"] == "case (1).png" and str(scan_folder) not in json.dumps(record)


def test_slices_are_streamed_in_batches_with_progress(classifier, scan_folder, monkeypatch):
    """At most batch_size decoded slices are alive at any model call; the result keeps no pixels."""
    alive: set[int] = set()
    batches: list[tuple[int, int]] = []
    read, analyze_batch = classifier.read, classifier.analyze_batch

    def tracked_read(image):
        piece = read(image)
        alive.add(id(piece))
        weakref.finalize(piece, alive.discard, id(piece))
        return piece

    def tracked_batch(images, explain=False):
        batches.append((len(images), len(alive)))
        return analyze_batch(images, explain=explain)

    monkeypatch.setattr(classifier, "read", tracked_read)
    monkeypatch.setattr(classifier, "analyze_batch", tracked_batch)
    calls = []
    result = classifier.analyze_scan(scan_folder, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert [size for size, _ in batches] == [4, 4, 2]
    assert all(live <= 4 for _, live in batches), batches
    assert calls == [(0, 10), (4, 10), (8, 10), (10, 10)]
    assert len(result.slices) == len(SCAN)


def test_heatmaps_for_the_top_slices_only(classifier, scan_folder):
    result = classifier.analyze_scan(scan_folder, top_k=2, explain=True)
    assert len(result.top) == 2 and set(result.heatmaps) == set(result.images) == set(result.top)
    for index, heatmap in result.heatmaps.items():
        image = synthetic_slice(*SCAN[index])
        assert heatmap.dtype == np.float32 and heatmap.shape == image.size[::-1]
        assert 0.0 <= heatmap.min() and heatmap.max() <= 1.0
        np.testing.assert_array_equal(result.images[index], np.asarray(image.convert("RGB")))


def test_an_unreadable_slice_is_skipped_with_a_note(classifier, scan_folder, tmp_path):
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(scan_folder.iterdir())[:4]:
            out.write(path, f"scan/{path.name}")
        data = (scan_folder / "case (1).png").read_bytes()
        out.writestr("scan/case (99).png", data[: len(data) // 2])  # a valid header, truncated pixels
    result = classifier.analyze_scan(archive)
    assert len(result.slices) == 4 and "case (99).png" not in [piece.name for piece in result.slices]
    assert any(note.startswith("skipped: case (99).png is damaged") for note in result.notes), result.notes


def test_a_dicom_series_out_of_distribution_gets_no_verdict(classifier, tmp_path):
    """The tiny package has no DICOM source: every slice is flagged, so the scan is, with a reason and the count."""
    assert not any(source.dicom for source in classifier.sources)
    for number in range(5):
        (tmp_path / f"IM{number}.dcm").write_bytes(series_slice((0.0, 0.0, 10.0 - 2.5 * number), number + 1,
                                                               value=900 + 40 * number))
    result = classifier.analyze_scan(tmp_path, top_k=2)
    assert [piece.position for piece in result.slices] == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert [piece.name for piece in result.slices] == ["IM4.dcm", "IM3.dcm", "IM2.dcm", "IM1.dcm", "IM0.dcm"]
    assert result.out_of_distribution and result.label is None and result.probabilities is None
    assert result.verdict == OOD_NOTICE and "5 of 5 slices" in result.ood_reason and "DICOM" in result.ood_reason
    assert not result.malignancy_ruled_out and sum(result.withheld_reasons.values()) == 5
    assert result.flagged_summary().startswith("5 of 5 slices flagged (no diagnosis): 5 a DICOM slice")
    scores = [piece.analysis.ood_score for piece in result.slices]
    assert result.top == list(np.argsort(scores)[::-1][:2])  # the slices least like the training data
    record = result.as_dict()
    assert record["label"] is None and all(row["label"] is None for row in record["slices"])


def test_a_package_without_a_scan_rule_is_refused(classifier, scan_folder, monkeypatch):
    monkeypatch.setattr(classifier, "config", {k: v for k, v in classifier.config.items() if k != "scan"})
    with pytest.raises(PackageError, match="predates whole-scan analysis.*python -m training"):
        classifier.analyze_scan(scan_folder)


def test_refusals_reach_the_caller_as_scan_errors(classifier, tmp_path):
    with pytest.raises(ScanError, match="no such file"):
        classifier.analyze_scan(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least 1"):
        classifier.analyze_scan(tmp_path, batch_size=0)


def test_the_packages_flagged_fraction_decides_when_a_scan_gets_no_verdict(classifier, scan_folder, monkeypatch):
    """max_flagged_fraction is read from the package's scan block, and the reason quotes that value."""
    analyze_batch = classifier.analyze_batch

    def three_flagged(images, **kwargs):  # the scan's 10 slices come in one batch: the first three flagged
        return [dataclasses.replace(a, out_of_distribution=i < 3, ood_reason="made up" if i < 3 else None)
                for i, a in enumerate(analyze_batch(images, **kwargs))]

    monkeypatch.setattr(classifier, "analyze_batch", three_flagged)
    assert classifier.config["scan"]["max_flagged_fraction"] == 0.5
    assert not classifier.analyze_scan(scan_folder).out_of_distribution  # 3 of 10 is not more than half
    monkeypatch.setattr(classifier, "config", {**classifier.config,
                                               "scan": {**classifier.config["scan"], "max_flagged_fraction": 0.25}})
    result = classifier.analyze_scan(scan_folder)
    assert result.out_of_distribution and result.label is None
    assert "3 of 10 slices were given no diagnosis (more than 25%); most often: made up" in result.ood_reason
