"""The whole-scan rule: pooling, the confident-malignant guarantee, and its choice by scan-level CV."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lung_classifier.scan.aggregation import MAX_FLAGGED_FRACTION, POOLS, ScanRule
from training import cv, scan_cv

LABELS = ("Normal", "Benign", "Malignant")
NORMAL_SLICE, BENIGN_SLICE, MALIGNANT_SLICE = [0.90, 0.06, 0.04], [0.10, 0.85, 0.05], [0.04, 0.04, 0.92]


def scan(*rows: list[float], normal_slices: int = 0) -> np.ndarray:
    return np.array([NORMAL_SLICE] * normal_slices + list(rows))


@pytest.mark.parametrize("pool", [pool for pool in POOLS if pool != "noisy_or"])
def test_every_rule_calls_an_all_normal_scan_normal_and_ranks_the_tumour_slice_first(pool):
    rule = ScanRule(LABELS, pool, k=3)
    assert LABELS[rule.decide(scan(normal_slices=30)).label] == "Normal"
    decision = rule.decide(scan(MALIGNANT_SLICE, normal_slices=30))
    assert decision.probabilities.sum() == pytest.approx(1.0)
    assert decision.contributions.argmax() == 30


def test_noisy_or_accumulates_small_doubts_with_scan_length():
    """Why scan-level CV rejects it: 30 slices each 6% Benign add up to a likely Benign scan."""
    rule = ScanRule(LABELS, "noisy_or")
    short, long = (rule.evidence(scan(normal_slices=n))[1] for n in (3, 30))
    assert long > short
    assert LABELS[rule.decide(scan(normal_slices=30)).label] != "Normal"


@pytest.mark.parametrize("pool", ["max", "top_k_mean", "noisy_or"])
def test_pooled_rules_keep_one_abnormal_slice_among_many_normal_ones_visible(pool):
    rule = ScanRule(LABELS, pool, k=1)
    assert LABELS[rule.decide(scan(BENIGN_SLICE, normal_slices=100)).label] == "Benign"


def test_a_confidently_malignant_slice_rules_out_normal_whatever_the_offsets():
    offsets = np.array([0.0, -5.0, -5.0])  # everything pushed towards Normal
    rule = ScanRule(LABELS, "mean_logit", offsets=offsets, confident_malignant=0.9)
    assert LABELS[rule.decide(scan([0.2, 0.0, 0.8], normal_slices=50)).label] == "Normal"  # 0.8 < 0.9
    assert LABELS[rule.decide(scan([0.05, 0.0, 0.95], normal_slices=50)).label] == "Malignant"


def test_a_normal_verdict_points_at_its_most_suspicious_slices():
    rule = ScanRule(LABELS, "mean_logit")
    decision = rule.decide(scan([0.6, 0.3, 0.1], normal_slices=20))
    assert LABELS[decision.label] == "Normal"
    assert decision.contributions.argmax() == 20


def test_rule_round_trips_through_json_config():
    rule = ScanRule(LABELS, "top_k_mean", k=5, temperature=0.8, bias=np.array([0.0, -0.1, -1.0]),
                    offsets=np.array([0.0, -0.25, 0.5]), confident_malignant=0.6)
    again = ScanRule.from_config(LABELS, json.loads(json.dumps(rule.as_config())))
    probabilities = np.random.default_rng(0).dirichlet([1, 1, 1], size=40)
    assert again.decide(probabilities).label == rule.decide(probabilities).label
    np.testing.assert_allclose(again.decide(probabilities).probabilities, rule.decide(probabilities).probabilities)


def test_bad_rules_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown scan pooling rule"):
        ScanRule(LABELS, "median")
    with pytest.raises(ValueError, match="Normal and Malignant"):
        ScanRule(("a", "b"), "max")
    with pytest.raises(ValueError, match="slice probabilities"):
        ScanRule(LABELS, "max").evidence(np.zeros((0, 3)))


def test_a_scan_is_flagged_when_most_of_its_slices_are():
    rule = ScanRule(LABELS, "max")
    assert rule.max_flagged_fraction == MAX_FLAGGED_FRACTION == 0.5
    assert rule.flagged(np.array([True, True, False]))
    assert not rule.flagged(np.array([True, False]))
    assert rule.flagged(np.array([], bool))


def test_the_flagged_fraction_is_read_from_the_package_with_a_default_for_old_packages():
    block = ScanRule(LABELS, "max", max_flagged_fraction=0.2).as_config()
    assert block["max_flagged_fraction"] == 0.2
    strict = ScanRule.from_config(LABELS, json.loads(json.dumps(block)))
    assert strict.max_flagged_fraction == 0.2
    assert strict.flagged(np.array([True, False, False, False]))  # 25% > 20%
    assert not ScanRule(LABELS, "max").flagged(np.array([True, False, False, False]))
    del block["max_flagged_fraction"]  # a package written before the key was
    assert ScanRule.from_config(LABELS, block).max_flagged_fraction == MAX_FLAGGED_FRACTION
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="max_flagged_fraction must be in"):
            ScanRule(LABELS, "max", max_flagged_fraction=bad)


def synthetic_scans(rng: np.random.Generator, per_class=(10, 6, 12)):
    """Slice probabilities where malignant scans hold a few clearly malignant slices among normal-looking ones."""
    y, groups, rows = [], [], []
    for label, count in enumerate(per_class):
        for _ in range(count):
            n = int(rng.integers(6, 14))
            group = len(set(groups))
            for i in range(n):
                if label == 2 and i < 3:
                    p = rng.dirichlet([1, 1, 12])
                elif label == 1 and i < 4:
                    p = rng.dirichlet([2, 8, 1])
                else:
                    p = rng.dirichlet([10, 2, 1.5])
                rows.append(p)
                y.append(label)
                groups.append(group)
    return np.array(rows), np.array(y), np.array(groups)


def test_scan_cv_scores_held_out_scans_and_prefers_pooling_over_averaging():
    rng = np.random.default_rng(3)
    probabilities, y, groups = synthetic_scans(rng)
    folds = cv.grouped_folds(y, groups, k=4, repeats=2, seed=0)
    repeats = 2
    crossfitted = cv.CrossFitted(np.broadcast_to(probabilities, (repeats, *probabilities.shape)).copy(),
                                 np.zeros((repeats, len(y)), np.int64), np.zeros((repeats, len(y)), bool),
                                 np.zeros((repeats, len(y)), bool), [])
    results = scan_cv.compare(crossfitted, y, groups, folds, list(LABELS))
    by_rule = {r.rule.describe(): r for r in results}
    assert {r.confusion.sum() for r in results} == {repeats * len(np.unique(groups))}  # each scan once per repeat
    assert by_rule["max"].summary["macro_f1"]["mean"] > by_rule["mean logit"].summary["macro_f1"]["mean"]
    chosen = scan_cv.best(results)
    assert chosen.malignant_called_normal == 0
    assert 0.5 <= chosen.rule.confident_malignant <= 0.9
    assert "(shipped)" in scan_cv.format_markdown(results, chosen)


def test_mixed_class_pseudo_patients_are_not_scans():
    with pytest.raises(ValueError, match="several classes"):
        scan_cv.pool_scans(ScanRule(LABELS, "max"), np.full((2, 3), 1 / 3), np.zeros(2, bool), np.array([0, 2]),
                           np.array([7, 7]))


def test_the_guarantee_threshold_sits_a_step_below_the_least_malignant_scan():
    assert scan_cv.confident_threshold([np.array([0.93, 0.71]), np.array([0.88])]) == 0.65
    assert scan_cv.confident_threshold([np.array([0.99])]) == 0.9  # capped
    assert scan_cv.confident_threshold([np.array([0.3])]) == 0.5  # never below an even chance
