"""``cxr-node models calibrate``: operating points (and ensemble weights) on the site's data.

Per finding, the threshold for a target sensitivity or specificity, or Youden's J; for an
ensemble, optionally the members' weights that maximise the mean AUC (the seeds' weighted
average). One bundle: a new version of the bundle (same weights, new thresholds). Several:
a new version of ``ensemble.json`` in the models folder. The version replaced is kept.
The node's score and priority follow the new operating points once its workers restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_node.settings import EnsembleMember
from workers.ensemble_config import (
    EnsembleConfig,
    next_version,
    read_ensemble_config,
    write_ensemble_config,
)
from workers.training.bundle_writer import write_bundle_version
from workers.training.datasets import read_labelled_data
from workers.training.metrics import finding_metrics, fit_member_weights
from workers.training.operating_points import ThresholdRule, choose_thresholds
from workers.training.predictions import Predictions, load_model, predict_data


def _rates(truth: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    figures = finding_metrics("", truth, scores, threshold, bootstrap=0)
    return {"sensitivity": figures.sensitivity, "specificity": figures.specificity}


def _member_matrix(predictions: Predictions) -> list[np.ndarray]:
    """Each member's (N, L) scores on the evaluated labels; NaN where it lacks a label."""
    matrices = []
    for member in predictions.members:
        matrix = np.full(predictions.scores.shape, np.nan)
        for column, label in enumerate(predictions.labels):
            if label in member.labels:
                matrix[:, column] = member.scores[:, member.labels.index(label)]
        matrices.append(matrix)
    return matrices


def _weighted(matrices: list[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The ensemble's rule: per label, the weighted mean over the members that have it."""
    total = np.zeros_like(matrices[0])
    mass = np.zeros_like(matrices[0])
    for matrix, weight in zip(matrices, weights, strict=True):
        present = ~np.isnan(matrix)
        total += np.where(present, matrix * weight, 0.0)
        mass += np.where(present, weight, 0.0)
    return np.asarray(total / np.maximum(mass, 1e-12))


MIN_WEIGHT = 0.01
"""A fitted weight below this is raised to it: a member stays in the ensemble (it may be the
only one with some finding, and the node's weights must be positive)."""


def floored(weights: Sequence[float]) -> list[float]:
    """Weights at least ``MIN_WEIGHT`` each, summing to 1."""
    raised = [max(float(w), MIN_WEIGHT) for w in weights]
    total = sum(raised)
    return [round(w / total, 6) for w in raised]


def calibrate(
    model_paths: Sequence[Path],
    data_path: Path,
    *,
    models_dir: Path,
    rule: ThresholdRule,
    fit_weights: bool = False,
    weights: Sequence[float] | None = None,
    images_root: Path | None = None,
    fmt: str | None = None,
    dry_run: bool = False,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Choose operating points (and weights) on labelled data and write a new version."""
    ensemble, config, config_folder = load_model(model_paths, weights, device)
    data = read_labelled_data(data_path, images_root=images_root, fmt=fmt)
    predictions = predict_data(ensemble, data, progress=progress)
    weights = [m.weight for m in ensemble.members]
    scores = predictions.scores
    result: dict[str, Any] = {"rule": str(rule), "n_images": len(predictions.truth)}
    if fit_weights and len(ensemble.members) > 1:
        matrices = _member_matrix(predictions)
        shared = [
            c for c in range(len(predictions.labels)) if all(~np.isnan(m[0, c]) for m in matrices)
        ]
        fitted, mean_auc = fit_member_weights(
            [m[:, shared] for m in matrices], predictions.truth[:, shared], seed=seed
        )
        weights = floored(fitted)
        scores = _weighted(matrices, weights)
        result["weights"] = {
            m.bundle.metadata.name: w for m, w in zip(ensemble.members, weights, strict=True)
        }
        result["weights_mean_auc"] = mean_auc
    thresholds, notes = choose_thresholds(
        predictions.truth, scores, predictions.labels, rule, fallback=predictions.thresholds
    )
    result["notes"] = notes
    result["per_finding"] = [
        {
            "label": label,
            "old_threshold": predictions.thresholds[c],
            "new_threshold": thresholds[label],
            "before": _rates(
                predictions.truth[:, c], predictions.scores[:, c], predictions.thresholds[c]
            ),
            "after": _rates(predictions.truth[:, c], scores[:, c], thresholds[label]),
        }
        for c, label in enumerate(predictions.labels)
    ]
    if dry_run:
        result["written"] = None
        return result
    note = f"{rule} on {len(predictions.truth)} images of {data_path.name}"
    if len(ensemble.members) == 1 and config is None:
        bundle = ensemble.members[0].bundle
        new = write_bundle_version(bundle.path, thresholds, note)
        result["written"] = {"bundle": str(bundle.path), "version": new.version}
        return result
    target = config_folder or models_dir
    previous = config or read_ensemble_config(target)
    members = [
        EnsembleMember(bundle=_member_reference(m.bundle.path, target), weight=w)
        for m, w in zip(ensemble.members, weights, strict=True)
    ]
    version = next_version(previous.version if previous else None)
    known = {name for name, _ in ensemble.labels}
    kept = {k: v for k, v in (previous.thresholds if previous else {}).items() if k in known}
    written = write_ensemble_config(
        target,
        EnsembleConfig(version=version, members=members, thresholds=kept | thresholds, note=note),
    )
    result["written"] = {"ensemble": str(written), "version": version}
    return result


def _member_reference(bundle: Path, models_dir: Path) -> str:
    """A bundle inside the models folder by its folder name, else by its absolute path."""
    resolved = bundle.resolve()
    return resolved.name if resolved.parent == models_dir.resolve() else str(resolved)
