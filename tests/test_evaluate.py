"""Evaluation and calibration math on examples small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import calibration, evaluate, fit

# --- calibration error and reliability bins -------------------------------------------------------

# Four two-class predictions, 5 bins of width 0.2 (confidences chosen away from bin edges):
#   p               true  predicted  confidence  bin
#   [0.90, 0.10]    0     0 (right)  0.90        (0.8, 1.0]
#   [0.75, 0.25]    1     0 (wrong)  0.75        (0.6, 0.8]
#   [0.30, 0.70]    1     1 (right)  0.70        (0.6, 0.8]
#   [0.45, 0.55]    1     1 (right)  0.55        (0.4, 0.6]
# bin (0.4, 0.6]: 1 image, confidence 0.55, accuracy 1   -> 1 * |1 - 0.55|    = 0.45
# bin (0.6, 0.8]: 2 images, confidence 0.725, accuracy 0.5 -> 2 * |0.5 - 0.725| = 0.45
# bin (0.8, 1.0]: 1 image, confidence 0.90, accuracy 1   -> 1 * |1 - 0.90|    = 0.10
# ECE = (0.45 + 0.45 + 0.10) / 4 = 0.25
ECE_PROBABILITIES = np.array([[0.90, 0.10], [0.75, 0.25], [0.30, 0.70], [0.45, 0.55]])
ECE_LABELS = np.array([0, 1, 1, 1])


def test_ece_hand_computed():
    assert evaluate.expected_calibration_error(ECE_PROBABILITIES, ECE_LABELS, bins=5) == pytest.approx(0.25)


def test_reliability_bins_hand_computed():
    bins = evaluate.reliability(ECE_PROBABILITIES, ECE_LABELS, bins=5)
    assert [(b["low"], b["high"], b["count"]) for b in bins] == [
        pytest.approx((0.4, 0.6, 1)), pytest.approx((0.6, 0.8, 2)), pytest.approx((0.8, 1.0, 1))]
    assert [b["confidence"] for b in bins] == pytest.approx([0.55, 0.725, 0.90])
    assert [b["accuracy"] for b in bins] == pytest.approx([1.0, 0.5, 1.0])


def test_ece_is_zero_when_confidence_equals_accuracy():
    # Confidence exactly 1.0 (the top edge) and all right: one bin, no gap.
    one_hot = np.eye(3)[[0, 1, 2, 1]]
    assert evaluate.expected_calibration_error(one_hot, np.array([0, 1, 2, 1])) == 0.0
    bins = evaluate.reliability(one_hot, np.array([0, 1, 2, 1]))
    assert len(bins) == 1 and bins[0]["high"] == 1.0 and bins[0]["count"] == 4
    # Always 0.8 confident and right 8 times in 10: calibrated.
    probabilities = np.tile([0.8, 0.2], (10, 1))
    assert evaluate.expected_calibration_error(probabilities, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0)
    # ... and right only half of the time: ECE = |0.5 - 0.8| = 0.3.
    assert evaluate.expected_calibration_error(probabilities, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.3)


def test_reliability_counts_add_up():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3)) * 2
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, 500)
    bins = evaluate.reliability(probabilities, labels)
    assert sum(b["count"] for b in bins) == 500
    for b in bins:
        assert b["low"] <= b["confidence"] <= b["high"] + 1e-12
    ece = evaluate.expected_calibration_error(probabilities, labels)
    assert ece == pytest.approx(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / 500)


# --- the report, on six images computed by hand ------------------------------------------------------

LABELS = ["A", "B", "C"]
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBABILITIES = np.array([
    [0.70, 0.20, 0.10],  # A, predicted A: right, confidence 0.70
    [0.40, 0.50, 0.10],  # A, predicted B: wrong, confidence 0.50
    [0.10, 0.85, 0.05],  # B, predicted B: right, confidence 0.85
    [0.20, 0.65, 0.15],  # B, predicted B: right, confidence 0.65
    [0.10, 0.25, 0.65],  # C, predicted C: right, confidence 0.65
    [0.50, 0.20, 0.30],  # C, predicted A: wrong, confidence 0.50
])
# accuracy = 4/6
# loss = -(ln .7 + ln .4 + ln .85 + ln .65 + ln .65 + ln .3) / 6
#      = (0.356675 + 0.916291 + 0.162519 + 0.430783 + 0.430783 + 1.203973) / 6 = 3.501023 / 6 = 0.583504
# confusion (rows true, columns predicted): A [1 1 0], B [0 2 0], C [1 0 1]
# A: precision 1/2, recall 1/2, F1 1/2;  B: 2/3, 1, F1 4/5;  C: 1, 1/2, F1 2/3
# macro-F1 = (1/2 + 4/5 + 2/3) / 3 = 59/90 = 0.655556
# ROC AUC, one-vs-rest (pairs positive > negative out of 2 x 4):
#   A: positives .7, .4 vs negatives .1 .2 .1 .5 -> 4 + 3 = 7/8;  B: .85, .65 vs .2 .5 .25 .2 -> 8/8;
#   C: .65, .3 vs .1 .1 .05 .15 -> 8/8
# ECE, 15 bins of width 1/15: confidences .5, .5 (bin 7, both wrong): 2 * .5 = 1.0;
#   .65, .65 (bin 9, both right): 2 * .35 = 0.7;  .7 (bin 10, right): .3;  .85 (bin 12, right): .15
#   -> (1.0 + 0.7 + 0.3 + 0.15) / 6 = 2.15 / 6 = 0.358333


def test_report_hand_computed():
    report = evaluate.report(PROBABILITIES, Y_TRUE, LABELS)
    assert report["n"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["loss"] == pytest.approx(0.583504, abs=1e-6)
    assert report["loss"] == pytest.approx(-sum(map(math.log, (0.7, 0.4, 0.85, 0.65, 0.65, 0.3))) / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["macro_f1"] == pytest.approx(59 / 90)
    expected = {"A": (1 / 2, 1 / 2, 1 / 2), "B": (2 / 3, 1, 4 / 5), "C": (1, 1 / 2, 2 / 3)}
    for label, (precision, recall, f1) in expected.items():
        row = report["per_class"][label]
        assert (row["precision"], row["recall"], row["f1-score"], row["support"]) == pytest.approx(
            (precision, recall, f1, 2)), label
    assert report["roc_auc"] == pytest.approx({"A": 7 / 8, "B": 1.0, "C": 1.0})
    assert report["ece"] == pytest.approx(2.15 / 6)


def test_report_when_a_class_is_absent():
    # No C in the truth: its AUC is undefined (None), its F1 counts as 0 in the macro average.
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    report = evaluate.report(probabilities, y_true, LABELS)
    assert report["accuracy"] == 1.0
    assert report["roc_auc"]["C"] is None
    assert report["roc_auc"]["A"] == 1.0
    assert report["macro_f1"] == pytest.approx(2 / 3)
    assert report["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_loss_is_finite_for_a_zero_probability_on_the_truth():
    report = evaluate.report(np.array([[1.0, 0.0, 0.0]]), np.array([1]), LABELS)
    assert report["loss"] == pytest.approx(-math.log(1e-12))


def test_format_report_shows_the_numbers():
    text = evaluate.format_report(evaluate.report(PROBABILITIES, Y_TRUE, LABELS), LABELS)
    assert "images: 6  loss: 0.5835  accuracy: 0.6667  macro-F1: 0.6556  ECE: 0.3583" in text
    assert "| A | 0.500 | 0.500 | 0.500 | 2 | 0.875 |" in text
    assert "| B | 0.667 | 1.000 | 0.800 | 2 | 1.000 |" in text
    assert "| true \\ predicted | A | B | C |" in text
    assert "| C | 1 | 0 | 1 |" in text


def test_macro_f1_counts_every_class():
    assert evaluate.macro_f1(np.array([0, 1, 2]), np.array([0, 1, 1]), 3) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert evaluate.macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == pytest.approx(1 / 3)


# --- calibration: temperature and per-class bias ---------------------------------------------------------


def sample_labels(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    return (probabilities.cumsum(axis=1) < rng.uniform(size=(len(probabilities), 1))).sum(axis=1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_calibration_recovers_the_generating_temperature_and_biases(temperature):
    rng = np.random.default_rng(42)
    logits = rng.normal(size=(20_000, 3)) * 3.0
    bias = np.array([0.0, -1.0, 0.7])
    labels = sample_labels(rng, calibration.softmax(logits / temperature + bias))
    fitted = calibration.fit(logits, labels)
    assert fitted.temperature == pytest.approx(temperature, rel=0.1)
    np.testing.assert_allclose(fitted.bias, bias, atol=0.1)


def test_calibration_undoes_a_class_weight_shift():
    # Logits pushed towards class 1 (as balanced class weights do for a rare class): the fitted
    # bias moves them back, and the calibrated probabilities match the observed frequencies.
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30_000, 3)) * 2.0
    labels = sample_labels(rng, calibration.softmax(logits))
    shifted = logits + np.array([0.0, 1.5, 0.0])
    fitted = calibration.fit(shifted, labels)
    assert fitted.bias[1] == pytest.approx(-1.5, abs=0.1)
    before = evaluate.expected_calibration_error(calibration.softmax(shifted), labels)
    after = evaluate.expected_calibration_error(fitted.probabilities(shifted), labels)
    assert after < 0.02 < before


# --- OOD statistics -------------------------------------------------------------------------------------


def test_ood_statistics_on_gaussian_data():
    rng = np.random.default_rng(0)
    dims = 40
    stds = np.linspace(5.0, 0.5, dims)
    order = rng.permutation(dims)  # axes not in std order in feature space
    z = rng.normal(size=(20_000, dims)) * stds[order]

    statistics = fit.ood_statistics(z)
    components, scale, residual = statistics.components, statistics.scale, statistics.residual
    k = fit.OOD_COMPONENTS
    assert components.shape == (k, dims) and scale.shape == (k,)
    np.testing.assert_allclose(components @ components.T, np.eye(k), atol=1e-6)
    # The principal axes are the coordinate axes with the largest spread, largest first.
    np.testing.assert_allclose(scale, stds[:k], rtol=0.03)
    expected_axes = [int(np.where(order == i)[0][0]) for i in range(k)]
    assert [int(np.argmax(np.abs(c))) for c in components] == expected_axes
    assert np.abs(components).max(axis=1).min() > 0.9
    # Residual: the mean squared value left in the 8 smallest-spread axes, averaged over all 40.
    assert residual == pytest.approx((stds[k:] ** 2).sum() / dims, rel=0.05)


def test_ood_score_is_about_one_on_training_data_and_large_off_it():
    import tensorflow as tf

    from lung_classifier.model.head import Head
    from lung_classifier.model.network import HeadVariables, head_outputs

    rng = np.random.default_rng(1)
    dims, n = 64, 4000
    mixing = rng.normal(size=(dims, dims))
    x_train = rng.normal(size=(n, dims)) @ mixing + 3.0
    mean, scale = fit.standardisation(x_train)
    z_train = (x_train - mean) / scale
    statistics = fit.ood_statistics(z_train)
    head = Head(feature_mean=mean, feature_scale=scale, kernel=np.zeros((dims, 3)), bias=np.zeros(3),
                temperature=np.array(1.0), decision_offsets=np.zeros(3), ood_components=statistics.components,
                ood_scale=statistics.scale, ood_residual=np.array(statistics.residual),
                ood_threshold=np.array(1e6), knn_components=statistics.components[:2], knn_bank=np.eye(2)[:1],
                knn_threshold=np.array(1e9)).as_float32()  # the kNN part (<= 2 x 1e6 / 1e9) stays below the PCA score

    def scores(x: np.ndarray) -> np.ndarray:
        graph = head_outputs(tf.constant(x, tf.float32), HeadVariables(head))["ood_score"].numpy()
        # The numpy score used during cross-validation is the graph's score.
        np.testing.assert_allclose(statistics.scores((x - mean) / scale), graph, rtol=1e-3)
        return graph

    inside = scores(x_train)
    assert inside.mean() == pytest.approx(1.0, rel=0.05)
    fresh = scores(rng.normal(size=(1000, dims)) @ mixing + 3.0)  # same distribution, unseen
    assert np.median(fresh) < 1.5
    shifted = scores(rng.normal(size=(1000, dims)) * 5.0 @ mixing + 3.0)
    off_manifold = scores(x_train[:1000] + rng.normal(size=(1000, dims)) * scale * 3.0)
    assert np.median(shifted) > 10 * np.median(fresh)
    assert np.median(off_manifold) > 3 * np.median(fresh)


def test_standardisation_keeps_dead_channels_finite():
    x = np.array([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0], [5.0, 0.0, 5.0]])
    mean, scale = fit.standardisation(x)
    np.testing.assert_allclose(mean, [3.0, 0.0, 5.0])
    np.testing.assert_allclose(scale, [np.std([1.0, 3.0, 5.0]), 1.0, 1.0])
