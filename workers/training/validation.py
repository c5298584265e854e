"""An evaluation's numbers and its report, written together (training and calibration)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workers.training.metrics import evaluate_scores
from workers.training.report import write_report


def validation_report(
    out_dir: Path,
    title: str,
    labels: Sequence[str],
    truth: np.ndarray,
    scores: np.ndarray,
    thresholds: Mapping[str, float],
    bootstrap: int = 1000,
    seed: int = 0,
    notes: Sequence[str] = (),
) -> tuple[dict[str, Any], Path]:
    """Per-finding metrics at ``thresholds`` (JSON-able) and the HTML report with its plots."""
    evaluation = evaluate_scores(
        title,
        list(labels),
        truth,
        scores,
        [thresholds[label] for label in labels],
        bootstrap=bootstrap,
        seed=seed,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report = write_report(out_dir, [evaluation], title, notes=list(notes))
    return evaluation.to_json(), report
