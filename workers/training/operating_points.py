"""Operating points: per finding, the threshold at which a probability counts as positive.

Chosen on labelled data for a target sensitivity, a target specificity, or Youden's J
(sensitivity + specificity - 1, Youden 1950). The node's rule is ``probability >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import numpy as np

from workers.training.metrics import choose_threshold

Method = Literal["youden", "sensitivity", "specificity"]
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdRule:
    """How thresholds are chosen: ``youden``, ``sensitivity:0.9`` or ``specificity:0.95``."""

    method: Method
    target: float | None = None

    @classmethod
    def parse(cls, text: str) -> ThresholdRule:
        """Read the command-line form."""
        method, _, target = text.strip().lower().partition(":")
        if method not in ("youden", "sensitivity", "specificity"):
            raise ValueError(
                f"threshold rule {text!r}: youden, sensitivity:TARGET or specificity:TARGET"
            )
        if method == "youden":
            if target:
                raise ValueError("youden takes no target")
            return cls("youden")
        try:
            value = float(target)
        except ValueError:
            raise ValueError(
                f"threshold rule {text!r}: {method} needs a target such as 0.9"
            ) from None
        if not 0.0 < value <= 1.0:
            raise ValueError(f"threshold rule {text!r}: the target is in (0, 1]")
        return cls(cast(Method, method), value)

    def __str__(self) -> str:
        return self.method if self.target is None else f"{self.method}:{self.target:g}"


def choose_thresholds(
    truth: np.ndarray,
    scores: np.ndarray,
    labels: Sequence[str],
    rule: ThresholdRule,
    fallback: Sequence[float] | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Per label, the threshold by ``rule`` on these data (unknown truth ignored); a label with
    only one class keeps its ``fallback`` (else 0.5), and a note says so."""
    thresholds: dict[str, float] = {}
    notes: list[str] = []
    for column, label in enumerate(labels):
        known = ~np.isnan(truth[:, column])
        y, s = truth[known, column], scores[known, column]
        keep = DEFAULT_THRESHOLD if fallback is None else float(fallback[column])
        if len(np.unique(y)) < 2:
            thresholds[label] = keep
            notes.append(
                f"{label}: only one class in the data; threshold left at {keep:g} ({rule})"
            )
            continue
        thresholds[label] = float(choose_threshold(y, s, rule.method, rule.target))
    return thresholds, notes
