"""The evaluation protocol: grouped repeated folds, cross-fitting, the decision rule, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from lung_classifier.verdict import decide
from training import calibration, cv, decision


def grouped_labels(rng: np.random.Generator, groups_per_class=(12, 6, 10), size=(4, 12)):
    """Labels and group ids where every group is one class, of random size."""
    y, groups = [], []
    for label, count in enumerate(groups_per_class):
        for _ in range(count):
            n = int(rng.integers(*size))
            y += [label] * n
            groups += [len(set(groups))] * n
    return np.array(y), np.array(groups)


def test_grouped_folds_keep_groups_whole_and_cover_every_slice_once_per_repeat():
    y, groups = grouped_labels(np.random.default_rng(0))
    folds = cv.grouped_folds(y, groups, k=5, repeats=3, seed=0)
    assert len(folds) == 15
    for repeat in range(3):
        mine = [fold for fold in folds if fold.repeat == repeat]
        tested = np.concatenate([fold.test for fold in mine])
        assert sorted(tested.tolist()) == list(range(len(y)))
        for fold in mine:
            assert not set(groups[fold.train]) & set(groups[fold.test])
            assert set(np.unique(y[fold.test])) == {0, 1, 2}  # stratified: every class in every fold
    first, second = ([fold.test.tolist() for fold in folds if fold.repeat == r] for r in (0, 1))
    assert sorted(map(sorted, first)) != sorted(map(sorted, second))  # reshuffled between repeats
    assert [f.test.tolist() for f in cv.grouped_folds(y, groups, 5, 3, 0)] == [f.test.tolist() for f in folds]


def test_out_of_fold_fills_every_slice_from_a_head_that_never_saw_it():
    y, groups = grouped_labels(np.random.default_rng(1))
    folds = cv.grouped_folds(y, groups, k=4, repeats=2)
    seen = []

    def fit_and_score(fold):
        seen.append((set(fold.train.tolist()), set(fold.test.tolist())))
        return np.tile([[1.0, 0.0, 0.0]], (len(fold.test), 1)), np.zeros((len(fold.test), 2))

    oof = cv.out_of_fold(len(y), 3, folds, fit_and_score)
    assert oof.logits.shape == (2, len(y), 3) and not np.isnan(oof.logits).any()
    assert all(not train & test for train, test in seen)


def test_cross_fit_never_fits_the_pipeline_on_the_fold_it_scores(monkeypatch):
    rng = np.random.default_rng(2)
    y, groups = grouped_labels(rng)
    folds = cv.grouped_folds(y, groups, k=5, repeats=2)
    logits = np.eye(3)[y] * 2.0 + rng.normal(size=(len(y), 3))
    oof = cv.OutOfFold(np.stack([logits, logits]), rng.normal(size=(2, len(y), 2)), folds)
    fitted_on = []
    real_fit = cv.fit_pipeline

    def recording_fit(logits, scores, labels, malignant, recall, sources):
        fitted_on.append(len(labels))
        return real_fit(logits, scores, labels, malignant, recall, sources)

    monkeypatch.setattr(cv, "fit_pipeline", recording_fit)
    crossfitted = cv.cross_fit(oof, y, ["Normal", "Benign", "Malignant"], 2, 0.99)
    assert fitted_on == [len(y) - len(fold.test) for fold in folds]
    assert len(crossfitted.reports) == len(folds)
    assert crossfitted.confusion(y, 3).sum() == 2 * len(y)
    summary = cv.summarise(crossfitted.reports, ["Normal", "Benign", "Malignant"])
    for name in ("macro_f1", "recall_Malignant", "ece", "auc_Benign", "ood_flag_rate"):
        entry = summary[name]
        assert entry["low"] <= entry["mean"] <= entry["high"] and entry["folds"] == len(folds)


def test_summary_interval_is_the_percentile_range_of_the_folds():
    reports = [{"accuracy": a, "macro_f1": a, "loss": 1.0, "ece": 0.1, "roc_auc": {"A": None},
                "per_class": {"A": {"recall": a, "precision": a, "support": 3}}} for a in np.linspace(0, 1, 41)]
    summary = cv.summarise(reports, ["A"])
    assert summary["accuracy"]["mean"] == pytest.approx(0.5)
    assert summary["accuracy"]["low"] == pytest.approx(0.025)
    assert summary["accuracy"]["high"] == pytest.approx(0.975)
    assert "auc_A" not in summary  # undefined AUCs are left out, not counted as zero


# --- the decision rule --------------------------------------------------------------------------------


def test_decision_offsets_reach_the_malignant_recall_target_at_the_best_balanced_accuracy():
    rng = np.random.default_rng(4)
    n = 600
    y = rng.integers(0, 3, n)
    # Malignant often looks Normal: the argmax misses many malignant slices.
    logits = np.eye(3)[y] * 1.5 + rng.normal(size=(n, 3))
    logits[(y == 2) & (rng.uniform(size=n) < 0.3), 0] += 2.0
    probabilities = calibration.softmax(logits)
    plain = probabilities.argmax(axis=1)
    assert np.mean(plain[y == 2] == 2) < 0.9
    offsets = decision.choose_offsets(probabilities, y, malignant=2, min_recall=0.99)
    predicted = decide(probabilities, offsets)
    assert offsets[0] == 0.0
    assert np.mean(predicted[y == 2] == 2) >= 0.99
    # No other grid point meeting the target has a better balanced accuracy.
    def balanced(labels: np.ndarray) -> float:
        return float(np.mean([np.mean(labels[y == c] == c) for c in range(3)]))

    best = balanced(predicted)
    for b in decision.OFFSET_GRID[::4]:
        for m in decision.OFFSET_GRID[::4]:
            other = decide(probabilities, np.array([0.0, b, m]))
            if np.mean(other[y == 2] == 2) >= 0.99:
                assert balanced(other) <= best + 1e-12


def test_decision_rule_in_the_graph_matches_the_numpy_rule():
    import tensorflow as tf

    from lung_classifier.model.head import Head
    from lung_classifier.model.network import HeadVariables, head_outputs

    rng = np.random.default_rng(5)
    dims = 6
    head = Head(feature_mean=np.zeros(dims), feature_scale=np.ones(dims), kernel=rng.normal(size=(dims, 3)),
                bias=rng.normal(size=3), temperature=np.array(0.7), decision_offsets=np.array([0.0, 0.5, 1.75]),
                ood_components=np.eye(dims)[:2], ood_scale=np.ones(2), ood_residual=np.array(1.0),
                ood_threshold=np.array(2.0), knn_components=np.eye(dims)[:2], knn_bank=np.eye(2)[:1],
                knn_threshold=np.array(10.0)).as_float32()  # a kNN distance is at most 2: that part never flags
    x = rng.normal(size=(500, dims)).astype(np.float32)
    outputs = head_outputs(tf.constant(x), HeadVariables(head))
    probabilities = outputs["probabilities"].numpy()
    np.testing.assert_array_equal(outputs["label"].numpy(), decide(probabilities, head.decision_offsets))
    assert (outputs["label"].numpy() != probabilities.argmax(axis=1)).any()  # the offsets matter here
    np.testing.assert_array_equal(outputs["out_of_distribution"].numpy(), outputs["ood_score"].numpy() > 2.0)
