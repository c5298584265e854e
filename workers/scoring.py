"""Abnormality score and triage priority from per-finding probabilities.

Score (default): the maximum over findings of the probability normalised so that each finding's
operating threshold maps to 0.5 (piecewise linear: [0, t] -> [0, 0.5], [t, 1] -> [0.5, 1]).
A score above 0.5 means at least one finding is positive at its operating point.
Priority: critical when a configured critical finding is positive, abnormal when any finding
is positive, else routine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cxr_node.jobs import Finding, Priority


def normalised_probability(probability: float, threshold: float) -> float:
    """Map ``probability`` so that ``threshold`` lands on 0.5, monotonically, within [0, 1]."""
    if threshold <= 0.0:
        return 0.5 + 0.5 * probability
    if threshold >= 1.0:
        return 0.5 * probability
    if probability < threshold:
        return 0.5 * probability / threshold
    return 0.5 + 0.5 * (probability - threshold) / (1.0 - threshold)


SCORE_METHODS = ("max_normalised", "max_probability")


def abnormality_score(findings: Sequence[Finding], method: str = "max_normalised") -> float:
    """The score in [0, 1] (0 without findings).

    ``max_normalised`` (default): the maximum of each finding's probability normalised so that
    its operating threshold maps to 0.5. ``max_probability``: the plain maximum probability
    (only comparable across findings when the model's thresholds are alike).
    """
    if method == "max_probability":
        return max((f.probability for f in findings), default=0.0)
    if method != "max_normalised":
        raise ValueError(f"unknown abnormality score method {method!r}")
    return max((normalised_probability(f.probability, f.threshold) for f in findings), default=0.0)


def priority(findings: Iterable[Finding], critical_labels: Iterable[str]) -> Priority:
    """Routine, abnormal, or critical when a critical finding is positive."""
    critical = {label.lower() for label in critical_labels}
    positives = [f for f in findings if f.positive]
    if any(f.label.lower() in critical for f in positives):
        return Priority.CRITICAL
    return Priority.ABNORMAL if positives else Priority.ROUTINE
