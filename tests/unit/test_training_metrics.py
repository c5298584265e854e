"""Evaluation numbers of workers.training.metrics, checked against scikit-learn (issue 14)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from workers.training.metrics import (
    bootstrap_auc,
    choose_threshold,
    evaluate_scores,
    finding_metrics,
    fit_member_weights,
    rank_auc,
)


def _data(n: int = 400, seed: int = 7, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scores that separate the classes moderately; rounding to 0.05 makes many ties."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.3).astype(float)
    scores = np.clip(0.25 * truth + 0.75 * rng.random(n), 0.0, 1.0)
    return truth, np.round(scores * 20) / 20 if ties else scores


def test_auc_equals_sklearn_with_ties() -> None:
    truth, scores = _data()
    assert len(np.unique(scores)) < 30  # plenty of ties
    expected = roc_auc_score(truth, scores)
    assert rank_auc(truth, scores) == pytest.approx(expected, abs=1e-12)
    m = finding_metrics("x", truth, scores, 0.5, bootstrap=0)
    assert m.auc == pytest.approx(expected, abs=1e-12)
    assert m.average_precision == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
    assert m.brier == pytest.approx(np.mean((scores - truth) ** 2), abs=1e-12)


def test_bootstrap_resample_auc_equals_sklearn() -> None:
    truth, scores = _data(n=200)
    aucs = bootstrap_auc(truth, scores, bootstrap=5, seed=3)
    idx = np.random.default_rng(3).integers(0, truth.size, size=(5, truth.size))
    expected = [roc_auc_score(truth[i], scores[i]) for i in idx]
    np.testing.assert_allclose(aucs, expected, rtol=0, atol=1e-12)


def test_nan_rows_are_dropped() -> None:
    truth, scores = _data()
    with_nan = truth.copy()
    with_nan[::5] = np.nan
    keep = ~np.isnan(with_nan)
    m = finding_metrics("x", with_nan, scores, 0.5, bootstrap=50)
    ref = finding_metrics("x", truth[keep], scores[keep], 0.5, bootstrap=50)
    assert m == ref
    assert m.n_positive + m.n_negative == keep.sum()
    assert m.auc == pytest.approx(roc_auc_score(truth[keep], scores[keep]), abs=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.55, 0.8])
def test_counts_and_rates_match_confusion_matrix(threshold: float) -> None:
    truth, scores = _data()
    m = finding_metrics("x", truth, scores, threshold, bootstrap=0)
    pred = (scores >= threshold).astype(int)  # the node's rule: score >= threshold
    tn, fp, fn, tp = confusion_matrix(truth.astype(int), pred, labels=[0, 1]).ravel()
    assert (m.tp, m.fp, m.tn, m.fn) == (tp, fp, tn, fn)
    assert (m.n_positive, m.n_negative) == (tp + fn, tn + fp)
    assert m.accuracy == pytest.approx((tp + tn) / truth.size)
    assert m.sensitivity == pytest.approx(tp / (tp + fn))
    assert m.specificity == pytest.approx(tn / (tn + fp))
    assert m.ppv == pytest.approx(tp / (tp + fp))
    assert m.npv == pytest.approx(tn / (tn + fn))
    assert m.threshold == threshold


def test_undefined_rates_are_none() -> None:
    truth, scores = _data()
    m = finding_metrics("x", truth, scores, 1.01, bootstrap=0)  # nothing predicted positive
    assert m.tp == m.fp == 0
    assert m.ppv is None
    assert m.sensitivity == 0.0


def test_bootstrap_ci_reproducible_and_contains_auc() -> None:
    truth, scores = _data()
    a = finding_metrics("x", truth, scores, 0.5, bootstrap=300, seed=1)
    b = finding_metrics("x", truth, scores, 0.5, bootstrap=300, seed=1)
    c = finding_metrics("x", truth, scores, 0.5, bootstrap=300, seed=2)
    assert (a.auc_ci_low, a.auc_ci_high) == (b.auc_ci_low, b.auc_ci_high)
    assert (a.auc_ci_low, a.auc_ci_high) != (c.auc_ci_low, c.auc_ci_high)
    assert a.auc is not None and a.auc_ci_low is not None and a.auc_ci_high is not None
    assert a.auc_ci_low < a.auc < a.auc_ci_high
    assert a.auc_ci_low >= 0.0 and a.auc_ci_high <= 1.0


def test_bootstrap_is_fast_on_10000_rows() -> None:
    truth, scores = _data(n=10_000, ties=False)
    start = time.perf_counter()
    m = finding_metrics("x", truth, scores, 0.5, bootstrap=1000, seed=0)
    assert time.perf_counter() - start < 5.0
    assert m.auc_ci_low is not None and m.auc_ci_high is not None
    assert m.auc_ci_high - m.auc_ci_low < 0.05


def test_single_class_label() -> None:
    truth = np.array([0.0, 0.0, np.nan, 0.0])
    scores = np.array([0.1, 0.7, 0.9, 0.2])
    m = finding_metrics("x", truth, scores, 0.5)
    assert m.auc is None and m.auc_ci_low is None and m.auc_ci_high is None
    assert m.average_precision is None and m.sensitivity is None
    assert m.specificity == pytest.approx(2 / 3)
    assert (m.n_positive, m.n_negative) == (0, 3)
    json.dumps(m.to_json())


def _sens(truth: np.ndarray, scores: np.ndarray, t: float) -> float:
    return float((scores[truth == 1] >= t).mean())


def _spec(truth: np.ndarray, scores: np.ndarray, t: float) -> float:
    return float((scores[truth == 0] < t).mean())


@pytest.mark.parametrize("ties", [True, False])
def test_threshold_for_sensitivity_is_tightest(ties: bool) -> None:
    truth, scores = _data(ties=ties)
    t = choose_threshold(truth, scores, "sensitivity", 0.9)
    assert 0.0 <= t <= 1.0
    assert _sens(truth, scores, t) >= 0.9
    higher = np.unique(scores[scores > t])
    assert all(_sens(truth, scores, h) < 0.9 for h in higher)  # no higher threshold reaches it


@pytest.mark.parametrize("ties", [True, False])
def test_threshold_for_specificity_is_tightest(ties: bool) -> None:
    truth, scores = _data(ties=ties)
    t = choose_threshold(truth, scores, "specificity", 0.8)
    assert 0.0 <= t <= 1.0
    assert _spec(truth, scores, t) >= 0.8
    lower = np.unique(scores[scores < t])
    assert all(_spec(truth, scores, x) < 0.8 for x in lower)  # no lower observed score does
    # any lower real threshold that still reaches the target makes the same calls on the data
    gap = float(np.nextafter(lower.max(), 1.0))
    assert ((scores >= gap) == (scores >= t)).all()


def test_threshold_targets_with_awkward_fractions() -> None:
    truth = np.array([1.0] * 10 + [0.0] * 10)
    scores = np.linspace(0.05, 0.95, 20)[::-1].copy()
    for target in (0.7, 0.3, 1.0):
        assert (
            _sens(truth, scores, choose_threshold(truth, scores, "sensitivity", target)) >= target
        )
        assert (
            _spec(truth, scores, choose_threshold(truth, scores, "specificity", target)) >= target
        )


def test_youden_equals_brute_force() -> None:
    truth, scores = _data()
    t = choose_threshold(truth, scores, "youden")
    j = {float(c): _sens(truth, scores, c) + _spec(truth, scores, c) - 1 for c in np.unique(scores)}
    best = max(j.values())
    assert _sens(truth, scores, t) + _spec(truth, scores, t) - 1 == pytest.approx(best)
    assert t == max(c for c, v in j.items() if v == pytest.approx(best))


def test_choose_threshold_errors() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        choose_threshold(np.array([1.0, 1.0, np.nan]), np.array([0.2, 0.4, 0.9]), "youden")
    truth, scores = _data()
    with pytest.raises(ValueError, match="target"):
        choose_threshold(truth, scores, "sensitivity")
    with pytest.raises(ValueError, match="target"):
        choose_threshold(truth, scores, "specificity", 1.5)


def test_member_weights_favour_informative_member() -> None:
    rng = np.random.default_rng(0)
    n, labels = 300, 3
    truth = (rng.random((n, labels)) < 0.3).astype(float)
    truth[rng.random((n, labels)) < 0.1] = np.nan
    informative = np.clip(0.4 * np.nan_to_num(truth) + 0.6 * rng.random((n, labels)), 0, 1)
    noise = rng.random((n, labels))

    def mean_auc(scores: np.ndarray) -> float:
        aucs = []
        for j in range(labels):
            known = ~np.isnan(truth[:, j])
            aucs.append(roc_auc_score(truth[known, j], scores[known, j]))
        return float(np.mean(aucs))

    for members, good in (([noise, informative], 1), ([noise, informative, noise], 1)):
        weights, best = fit_member_weights(members, truth, seed=0)
        assert len(weights) == len(members)
        assert sum(weights) == pytest.approx(1.0)
        assert min(weights) >= 0.0
        assert weights[good] > 0.7
        assert best >= mean_auc(np.mean(members, axis=0)) - 1e-12
        combined = np.tensordot(np.array(weights), np.stack(members), axes=1)
        assert best == pytest.approx(mean_auc(combined), abs=1e-12)
        assert fit_member_weights(members, truth, seed=0) == (weights, best)  # deterministic

    four = [noise, informative, rng.random((n, labels)), rng.random((n, labels))]
    weights, best = fit_member_weights(four, truth, seed=0)
    assert weights[1] > 0.7
    assert best >= mean_auc(np.mean(four, axis=0)) - 1e-12
    assert fit_member_weights([informative], truth) == ([1.0], pytest.approx(mean_auc(informative)))


def test_evaluate_scores_mean_auc_and_json() -> None:
    rng = np.random.default_rng(5)
    truth = (rng.random((120, 3)) < 0.4).astype(float)
    truth[:, 2] = 0.0  # one class only: excluded from the mean
    truth[::7, 0] = np.nan
    scores = np.clip(0.3 * np.nan_to_num(truth) + 0.7 * rng.random((120, 3)), 0, 1)
    ev = evaluate_scores("model", ["A", "B", "C"], truth, scores, [0.5, 0.4, 0.6], bootstrap=100)
    aucs = []
    for j in range(2):
        known = ~np.isnan(truth[:, j])
        aucs.append(roc_auc_score(truth[known, j], scores[known, j]))
    assert ev.mean_auc == pytest.approx(np.mean(aucs), abs=1e-12)
    assert [m.label for m in ev.per_finding] == ["A", "B", "C"]
    assert ev.per_finding[2].auc is None
    assert [m.threshold for m in ev.per_finding] == [0.5, 0.4, 0.6]
    doc = json.loads(json.dumps(ev.to_json()))
    assert doc["name"] == "model" and doc["n_images"] == 120
    assert doc["mean_auc"] == pytest.approx(ev.mean_auc)
    assert doc["per_finding"][2]["auc"] is None
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_scores("model", ["A", "B", "C"], truth, scores, [0.5])
