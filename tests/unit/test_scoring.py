"""Abnormality score and triage priority (workers.scoring)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cxr_node.jobs import CodedConcept, Finding, Priority
from workers.labels import code_for
from workers.scoring import abnormality_score, normalised_probability, priority

THRESHOLDS = [0.01, 0.1, 0.25, 0.5, 0.73, 0.9, 0.99]


def finding(label: str, probability: float, threshold: float = 0.5) -> Finding:
    return Finding(
        label=label,
        code=CodedConcept(value="0", scheme="99TEST", meaning=label),
        probability=probability,
        threshold=threshold,
        positive=probability >= threshold,
    )


# --- normalised probability -------------------------------------------------------------------


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_threshold_maps_to_one_half(threshold: float) -> None:
    assert normalised_probability(threshold, threshold) == pytest.approx(0.5)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_ends_map_to_ends(threshold: float) -> None:
    assert normalised_probability(0.0, threshold) == 0.0
    assert normalised_probability(1.0, threshold) == pytest.approx(1.0)


@pytest.mark.parametrize("threshold", [*THRESHOLDS, 0.0, 1.0])
def test_monotonic_and_within_unit_range(threshold: float) -> None:
    grid = np.linspace(0.0, 1.0, 201)
    values = [normalised_probability(float(p), threshold) for p in grid]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("threshold", [*THRESHOLDS, 0.0, 1.0])
def test_above_one_half_exactly_when_positive(threshold: float) -> None:
    """Score >= 0.5 is the same statement as probability >= threshold (the finding is positive)."""
    for p in np.linspace(0.0, 1.0, 101):
        assert (normalised_probability(float(p), threshold) >= 0.5) == (p >= threshold)


def test_piecewise_linear_on_both_sides_of_the_threshold() -> None:
    assert normalised_probability(0.1, 0.2) == pytest.approx(0.25)
    assert normalised_probability(0.6, 0.2) == pytest.approx(0.75)
    assert normalised_probability(0.9, 0.8) == pytest.approx(0.75)


def test_threshold_one() -> None:
    """Nothing below certainty is positive: [0, 1] maps onto [0, 0.5]."""
    assert normalised_probability(0.0, 1.0) == 0.0
    assert normalised_probability(0.5, 1.0) == pytest.approx(0.25)
    assert normalised_probability(1.0, 1.0) == pytest.approx(0.5)


def test_threshold_zero_keeps_the_ends() -> None:
    """Everything is positive at a zero threshold: at least one half."""
    assert normalised_probability(0.0, 0.0) == 0.5
    assert normalised_probability(1.0, 0.0) == 1.0


def test_threshold_zero_is_the_limit_of_small_thresholds() -> None:
    for p in (0.01, 0.2, 0.6):
        assert normalised_probability(p, 0.0) == pytest.approx(0.5 + 0.5 * p)
        assert normalised_probability(p, 0.0) == pytest.approx(
            normalised_probability(p, 1e-9), abs=1e-6
        )


def test_threshold_one_is_the_limit_of_large_thresholds() -> None:
    for p in (0.01, 0.2, 0.6, 0.999):
        assert normalised_probability(p, 1.0) == pytest.approx(
            normalised_probability(p, 1.0 - 1e-9), abs=1e-6
        )


# --- abnormality score ------------------------------------------------------------------------


def test_abnormality_score_is_the_maximum_normalised_probability() -> None:
    findings = [
        finding("Effusion", 0.30, threshold=0.6),  # 0.25
        finding("Nodule", 0.55, threshold=0.1),  # 0.75
        finding("Atelectasis", 0.90, threshold=0.95),  # ~0.4737
    ]
    assert abnormality_score(findings) == pytest.approx(0.75)


def test_high_probability_below_its_threshold_scores_below_a_low_positive_one() -> None:
    """The score compares findings at their operating points, not raw probabilities."""
    negative = [finding("Cardiomegaly", 0.9, threshold=0.95)]
    positive = [finding("Pneumothorax", 0.2, threshold=0.1)]
    assert abnormality_score(negative) < 0.5 < abnormality_score(positive)


def test_abnormality_score_without_findings_is_zero() -> None:
    assert abnormality_score([]) == 0.0


# --- priority ---------------------------------------------------------------------------------


def test_routine_when_nothing_is_positive() -> None:
    findings = [finding("Pneumothorax", 0.2), finding("Effusion", 0.49)]
    assert priority(findings, ["Pneumothorax"]) is Priority.ROUTINE
    assert priority([], ["Pneumothorax"]) is Priority.ROUTINE


def test_abnormal_when_a_non_critical_finding_is_positive() -> None:
    findings = [finding("Pneumothorax", 0.2), finding("Effusion", 0.8)]
    assert priority(findings, ["Pneumothorax"]) is Priority.ABNORMAL


def test_critical_when_a_critical_finding_is_positive() -> None:
    findings = [finding("Pneumothorax", 0.7), finding("Effusion", 0.8)]
    assert priority(findings, ["Pneumothorax"]) is Priority.CRITICAL


@pytest.mark.parametrize("configured", ["pneumothorax", "PNEUMOTHORAX", "PneumoThorax"])
def test_critical_labels_are_case_insensitive(configured: str) -> None:
    assert priority([finding("Pneumothorax", 0.7)], [configured]) is Priority.CRITICAL


def test_negative_critical_finding_does_not_make_it_critical() -> None:
    assert priority([finding("Pneumothorax", 0.49)], ["Pneumothorax"]) is Priority.ROUTINE


def test_no_critical_labels_configured() -> None:
    assert priority([finding("Pneumothorax", 0.9)], []) is Priority.ABNORMAL


def test_critical_labels_can_be_any_iterable() -> None:
    labels = (label for label in ["Mass", "pneumothorax"])
    assert priority([finding("Pneumothorax", 0.9)], labels) is Priority.CRITICAL


def test_score_methods_differ_as_documented() -> None:
    findings = [
        Finding(label="A", code=code_for("A"), probability=0.3, threshold=0.1, positive=True),
        Finding(label="B", code=code_for("B"), probability=0.6, threshold=0.9, positive=False),
    ]
    assert abnormality_score(findings, "max_probability") == pytest.approx(0.6)
    assert abnormality_score(findings, "max_normalised") == pytest.approx(0.5 + 0.5 * 0.2 / 0.9)
    with pytest.raises(ValueError, match="unknown"):
        abnormality_score(findings, "mean")
