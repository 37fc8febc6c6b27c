"""analyze_many on the tiny package: one Outcome per item, in order, failures kept, a batch at a time."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import synthetic_slice

from lung_classifier import ImageError, LungClassifier
from lung_classifier.batch import PixelBudgetExceeded, analyze_many


@pytest.fixture(scope="module")
def classifier(tiny_package) -> LungClassifier:
    return LungClassifier.from_pretrained(tiny_package, trust_saved_model=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[str]:
    """Two good slices, a text file, a missing file, and a third good slice."""
    folder = tmp_path_factory.mktemp("many")
    for name, label in (("a.png", "Malignant"), ("b.png", "Normal"), ("e.png", "Benign")):
        synthetic_slice(label, 11).save(folder / name)
    (folder / "c.txt").write_text("not an image")
    return [str(folder / name) for name in ("a.png", "b.png", "c.txt", "missing.png", "e.png")]


def test_each_item_gets_its_outcome_in_order_and_bad_files_fail_only_themselves(classifier, files):
    calls, progress = [], []
    analyze_batch = classifier.analyze_batch

    def counted(images, explain=False):
        calls.append(len(images))
        return analyze_batch(images, explain=explain)

    classifier.analyze_batch = counted
    try:
        outcomes = list(classifier.analyze_many(files, batch_size=2,
                                                progress=lambda done, total: progress.append((done, total))))
    finally:
        del classifier.analyze_batch
    assert [outcome.item for outcome in outcomes] == files
    assert [outcome.analysis is None for outcome in outcomes] == [False, False, True, True, False]
    assert all(isinstance(outcomes[i].error, ImageError) for i in (2, 3))
    assert "c.txt" in str(outcomes[2].error) and "missing.png" in str(outcomes[3].error)
    assert calls == [2, 1]  # batch 2 held two bad files: nothing to analyse, no model call; batch 3 one
    assert progress == [(0, 5), (2, 5), (4, 5), (5, 5)]
    alone = classifier.analyze_batch([files[0], files[1], files[4]])
    for outcome, expected in zip([outcomes[0], outcomes[1], outcomes[4]], alone):
        assert outcome.error is None and outcome.analysis.label == expected.label
        np.testing.assert_allclose(list(outcome.analysis.probabilities.values()),
                                   list(expected.probabilities.values()), atol=1e-5)


def test_read_maps_items_to_inputs(classifier, files):
    items = [{"path": path} for path in files[:2]]
    outcomes = list(analyze_many(classifier, items, read=lambda item: item["path"]))
    assert [outcome.item for outcome in outcomes] == items and all(outcome.analysis for outcome in outcomes)


def test_the_pixel_budget_stops_decoding_past_it(classifier, files):
    size = np.prod(synthetic_slice("Normal", 11).size)
    outcomes = list(analyze_many(classifier, [files[0], files[1], files[4]], batch_size=2,
                                 max_pixels=int(size * 1.5)))
    assert outcomes[0].analysis is not None
    assert [type(outcome.error) for outcome in outcomes[1:]] == [PixelBudgetExceeded, PixelBudgetExceeded]
    assert "another batch" in str(outcomes[1].error)


def test_a_batch_size_below_one_is_refused(classifier, files):
    with pytest.raises(ValueError, match="batch_size"):
        next(analyze_many(classifier, files, batch_size=0))


def test_evaluate_scores_the_readable_images_and_names_the_rest(tiny_package, synthetic_dataset, tmp_path,
                                                               monkeypatch, capsys):
    """training.evaluate uses analyze_many: a file gone between listing and analysis is reported, not fatal."""
    import training.data
    from training import evaluate

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    listed = training.data.scan_folder

    def list_then_lose_one(root, progress=True):
        dataset = listed(root, progress=progress)
        dataset.items[0].path.unlink()
        return dataset

    monkeypatch.setattr(training.data, "scan_folder", list_then_lose_one)
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--model", str(tiny_package), "--trust-saved-model", "--data", str(data),
                          "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 89 and len(metrics["unreadable"]) == 1
    assert "not scored, unreadable (1)" in capsys.readouterr().out
