"""Training sources (issue 17, 23): the --source flag, grouping rules, source weights, the scan rule's offsets,
each source's operating point, leave-one-source-out on small synthetic features, the union guard in numpy and
in the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lung_classifier.evidence import STATISTICS
from training import cv, data, decision, fit, per_source, recognition
from training.multisource import AS_IS, PACKAGE_RENDERING, SourceData, TrainingSet
from training.sources import Source, SourceError, check_unique, near_duplicate_groups, parse_source

LABELS = ["Normal", "Benign", "Malignant"]


def test_a_full_source_spec_is_read_field_by_field():
    source = parse_source("chest=/data/chest;title=Chest CT;grouping=near-duplicates;"
                          "labels=normal*:Normal,*carcinoma*:Malignant;findings=normal*:healthy;licence=CC BY 4.0, cite it")
    assert source.name == "chest" and source.folder == Path("/data/chest") and source.shown_title == "Chest CT"
    assert source.grouping == "near-duplicates" and source.licence == "CC BY 4.0, cite it"
    assert source.label_of("normal") == "Normal"
    assert source.label_of("Large.Cell.Carcinoma_left") == "Malignant"
    assert source.finding_of("normal") == "healthy" and source.finding_of("adeno") is None
    with pytest.raises(SourceError, match="matches no pattern"):
        source.label_of("other")


def test_without_a_label_map_folder_names_are_read_as_iq_oth_nccd_names():
    source = parse_source("iq=/data/iq")
    assert source.grouping == "pseudo-patients"
    assert [source.label_of(name) for name in ("Bengin cases", "Malignant cases", "Normal cases")] == [
        "Benign", "Malignant", "Normal"]


@pytest.mark.parametrize("text, message", [
    ("nofolder", "NAME=FOLDER"),
    ("a b=/x", "letters, digits"),
    ("a=/x;colour=red", "unknown option"),
    ("a=/x;grouping=by-hand", "unknown grouping"),
    ("a=/x;labels=normal", "not PATTERN:VALUE"),
    ("a=/x;labels=n:Normal;labels=m:Malignant", "given twice"),
])
def test_a_malformed_source_spec_says_what_is_wrong(text, message):
    with pytest.raises(SourceError, match=message):
        parse_source(text)


def test_source_names_must_be_unique_and_at_least_one_given():
    with pytest.raises(SourceError, match="given twice"):
        check_unique([parse_source("a=/x"), parse_source("a=/y")])
    with pytest.raises(SourceError, match="no training source"):
        check_unique([])


def test_the_training_cli_refuses_a_bad_source_before_loading_anything(capsys):
    from training.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--source", "a=/x;grouping=nope", "--output", "/tmp/never"])
    assert "unknown grouping" in capsys.readouterr().err


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = vector - vector.mean()
    return vector / np.linalg.norm(vector)


def test_near_duplicate_groups_join_look_alikes_and_copies_within_a_class_only():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=64))
    prints = np.stack([base, _unit(base + 0.01 * rng.normal(size=64)), base,
                       _unit(rng.normal(size=64)), _unit(rng.normal(size=64)), _unit(rng.normal(size=64))])
    features = rng.normal(size=(6, 32))
    labels = ["Normal", "Normal", "Malignant", "Normal", "Normal", "Malignant"]
    paths = [Path(n) for n in ("1.png", "2.png", "3.png", "10 - Copy (2).png", "10 (3).png", "10.png")]
    groups = near_duplicate_groups(labels, prints, features, paths)
    assert groups[0] == groups[1]  # look-alikes of one class
    assert groups[2] != groups[0]  # the same picture under another class is another patient
    assert groups[3] == groups[4]  # a "- Copy" file joins its stem
    assert groups[5] != groups[3]  # ... within its class only
    assert len(set(groups)) == 4


def test_dicom_series_are_one_group_each(tmp_path):
    from pydicom.data import get_testdata_file

    from training.multisource import read_dicom_folders

    ct = Path(get_testdata_file("CT_small.dcm"))
    for series in ("normal001", "P001"):
        (tmp_path / series).mkdir()
        for index in range(2):
            (tmp_path / series / f"{index}.dcm").write_bytes(ct.read_bytes())
    folders = sorted(tmp_path.iterdir())
    dataset = read_dicom_folders(folders, {folder: "Normal" for folder in folders})
    from training.multisource import _series_groups

    assert _series_groups(dataset.items) == [0, 0, 1, 1]


def test_source_balanced_weights_give_each_source_the_same_total_and_balance_classes_inside():
    y = np.array([0] * 90 + [2] * 10 + [0] * 300)
    sources = np.array([0] * 100 + [1] * 300)
    weights = fit.sample_weights(y, sources, "source-balanced")
    assert weights.mean() == pytest.approx(1.0)
    assert weights[sources == 0].sum() == pytest.approx(weights[sources == 1].sum())
    assert weights[(sources == 0) & (y == 0)].sum() == pytest.approx(weights[(sources == 0) & (y == 2)].sum())


def test_a_class_absent_from_the_training_rows_is_never_predicted():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (40, 8)), rng.normal(2, 1, (40, 8))])
    y = np.array([0] * 40 + [2] * 40)
    linear = fit.fit_linear(x, y, 3, fit.HeadSettings(0.1, "source-balanced"))
    assert linear.bias[1] == fit.ABSENT_CLASS_BIAS and not np.any(linear.kernel[:, 1])
    assert set(np.argmax(linear.logits(x), axis=1).tolist()) <= {0, 2}


def test_offsets_reach_the_malignant_recall_target_in_every_source_that_has_malignant():
    rng = np.random.default_rng(2)
    n = 300
    y = rng.choice([0, 1, 2], n)
    sources = np.repeat([0, 1, 2], n // 3)
    y[sources == 2] = 0  # a source without Malignant
    p = np.full((n, 3), 0.1)
    p[np.arange(n), y] = 0.5
    p[sources == 1, 2] *= np.where(y[sources == 1] == 2, 0.15, 1.0)  # source 1's cancers look less malignant
    p = p + rng.uniform(0, 0.3, p.shape)
    p /= p.sum(axis=1, keepdims=True)
    offsets = decision.choose_offsets(p, y, 2, 0.99, sources)
    from lung_classifier.verdict import decide

    labels = decide(p, offsets)
    for source in (0, 1):
        malignant = (sources == source) & (y == 2)
        assert np.mean(labels[malignant] == 2) >= 0.99


def _synthetic_training_set(seed: int = 0) -> TrainingSet:
    """Three sources of 2-D-separable features, the third far from the others (a source to leave out)."""
    rng = np.random.default_rng(seed)
    rows = []
    for source, (shift, classes) in enumerate(((0.0, (0, 1, 2)), (0.5, (0, 2)), (6.0, (0, 2)))):
        for label in classes:
            for group in range(6):
                centre = np.zeros(16)
                centre[label] = 3.0
                centre[8 + source] = 4.0 + shift
                rows.append((rng.normal(centre, 1.0, (5, 16)), label, source, f"{source}-{label}-{group}"))
    names = {g: i for i, g in enumerate(dict.fromkeys(r[3] for r in rows))}
    entries = [SourceData(Source(f"s{i}", Path(f"/s{i}")), data.Dataset(items=[]), [], False, {}) for i in range(3)]
    x = np.concatenate([r[0] for r in rows])
    count = [len(r[0]) for r in rows]
    sources = np.repeat([r[2] for r in rows], count)
    statistics = rng.normal(0, 1, (len(x), len(STATISTICS))) + 10.0 * sources[:, None]  # renderings differ by source
    return TrainingSet(entries, LABELS, x.astype(np.float32), np.repeat([r[1] for r in rows], count), sources,
                       np.repeat([names[r[3]] for r in rows], count), np.full(len(x), AS_IS, dtype="<U16"),
                       np.arange(len(x)), statistics)


def test_leave_one_source_out_trains_without_the_source_and_the_guard_flags_a_far_one():
    training = _synthetic_training_set()
    folds = cv.grouped_folds(training.y, training.group, 3, 1, 0, training.source)
    recognisers = recognition.fit(training, folds).recognisers
    results = per_source.loso(training, fit.HeadSettings(0.1, "source-balanced"), 3, 0, recognisers)
    assert set(results) == {"s0", "s1", "s2"}
    assert results["s2"]["trained_on"] == ["s0", "s1"]
    assert results["s2"]["guard_flagged"] > 0.9  # a source never seen, far away: flagged
    assert all(entry["recognition_flagged"] > 0.95 for entry in results.values())  # renderings apart
    assert results["s1"]["n"] == int(np.sum(training.source == 1))
    for entry in results.values():
        assert 0.0 <= entry["answered"] <= 1.0


def test_within_source_cv_reports_every_source_pooled_and_per_fold():
    training = _synthetic_training_set(1)
    folds = cv.grouped_folds(training.y, training.group, 3, 2, 0, training.source)
    from training import selection

    result = selection.evaluate_candidate(fit.HeadSettings(0.1, "source-balanced"), training.features, training.y,
                                          training.source, LABELS, folds,
                                          selection.ood_scores_per_fold(training.features, folds), 2, 0.99)
    recognised = recognition.fit(training, folds)
    validated = per_source.validated_sources(training, result.crossfitted)
    within = per_source.within(training, result.crossfitted, result.oof, recognised.held_out_flagged, validated)
    assert set(within) == {"s0", "s1", "s2"}
    assert within["s0"]["pooled"]["n"] == 2 * int(np.sum(training.source == 0))
    assert within["s0"]["pooled"]["recall_Malignant"] >= 0.9
    cancers = (training.source == 0) & (training.y == 2)
    caught = float(np.mean(~result.crossfitted.ruled_out[:, cancers]))
    assert caught > 0.9 and within["s0"]["validated"] == (caught >= decision.SCREENING_RECALL)
    assert within["s0"]["pooled"]["screening_sensitivity"] >= caught  # a flagged cancer is never ruled out
    assert within["s0"]["folds"]["answered"]["folds"] == 6
    assert within["s0"]["pooled"]["recognition_flagged"] <= 0.1  # held-out rows of a source are recognised
    held_out = [row for row in recognised.table if row["set"] == "s0: held-out patients (grouped CV)"]
    assert held_out and held_out[0]["flagged"] <= 0.1


def test_the_union_guard_flags_the_same_in_numpy_and_in_the_graph():
    import tensorflow as tf

    from lung_classifier.model.head import Head
    from lung_classifier.model.network import HeadVariables, head_outputs
    from training.calibration import Calibration

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 40)) * rng.uniform(0.5, 3, 40)
    y = rng.choice([0, 1, 2], 300)
    linear = fit.fit_linear(x, y, 3, fit.HeadSettings(0.1, "class-balanced"))
    guard = fit.guard_statistics((x - linear.mean) / linear.scale)
    queries = np.concatenate([x[:50], rng.normal(size=(50, 40)) * 4, rng.normal(size=(50, 40)) + 5])
    scores = guard.scores((queries - linear.mean) / linear.scale)
    thresholds = (float(np.quantile(scores[:, 0], 0.6)), float(np.quantile(scores[:, 1], 0.6)))
    head = fit.assemble(linear, guard, Calibration(1.0, np.zeros(3)), thresholds)
    outputs = head_outputs(tf.constant(queries, tf.float32), HeadVariables(head))
    expected = cv.Pipeline(Calibration(1.0, np.zeros(3)), {}, thresholds).flagged(scores)
    assert 0 < expected.sum() < len(expected)
    assert np.array_equal(outputs["out_of_distribution"].numpy(), expected)
    both = np.maximum(scores[:, 0], scores[:, 1] * thresholds[0] / thresholds[1])
    np.testing.assert_allclose(outputs["ood_score"].numpy(), both, rtol=1e-4, atol=1e-4)
    assert isinstance(head, Head)


def test_the_knn_bank_is_stored_as_float16_and_loads_back_as_used(tmp_path):
    from lung_classifier.model.head import Head

    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 24))
    linear = fit.fit_linear(x, rng.choice([0, 1, 2], 120), 3, fit.HeadSettings(0.1, "class-balanced"))
    from training.calibration import Calibration

    head = fit.assemble(linear, fit.guard_statistics((x - linear.mean) / linear.scale),
                        Calibration(1.0, np.zeros(3)), (1.0, 0.5))
    head.save(tmp_path / "head.npz")
    with np.load(tmp_path / "head.npz") as stored:
        assert stored["knn_bank"].dtype == np.float16 and stored["knn_components"].dtype == np.float16
        assert stored["kernel"].dtype == np.float32
    loaded = Head.load(tmp_path / "head.npz")
    assert np.array_equal(loaded.knn_bank, head.knn_bank)  # training rounded the bank before measuring


def test_a_source_point_rules_out_below_a_threshold_most_cancers_reach_and_is_calibrated_on_the_source():
    rng = np.random.default_rng(5)
    y = np.array([0] * 50 + [2] * 450)  # nine cancers per normal, as in Chest CT-Scan
    p = np.where(y[:, None] == 2, [0.3, 0.0, 0.7], [0.7, 0.0, 0.3]) + rng.uniform(0, 0.3, (500, 3))
    p[:, 1] = 1e-6
    p /= p.sum(axis=1, keepdims=True)
    point = cv.source_point(p, y, 2, 0.99)
    assert not point.classes[1] and point.bias()[1] == cv.ABSENT_BIAS  # Benign never shown by this source
    from lung_classifier.evidence import SourceEvidence

    shown = SourceEvidence.calibrated_with(p, point.calibration.temperature, point.bias())
    assert np.mean(shown[y == 2, 2] >= point.rule_out) >= 0.99
    assert abs(shown[:, 2].mean() - np.mean(y == 2)) < 0.02  # calibrated: P(Malignant) averages the cancer share
    without_cancer = cv.source_point(p[y == 0], y[y == 0], 2, 0.99)
    assert without_cancer.rule_out == 0.0 and without_cancer.calibration.temperature == 1.0


def test_package_rendering_rows_are_what_the_product_sees():
    training = _synthetic_training_set()
    training.rendering[:3] = PACKAGE_RENDERING
    training.rendering[3:6] = "C50/W350"
    answered = training.answered_rendering()
    assert answered[:3].all() and not answered[3:6].any() and answered[6:].all()
