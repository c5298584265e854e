"""``cxr-node models evaluate BUNDLE_OR_ENSEMBLE... --data ...``: per-finding tables (seed 004's
and more), each ensemble member beside the ensemble (seed 002's comparison), plots and an HTML
report; ``--json`` prints one object for machines.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from workers.training.datasets import LabelledData, read_labelled_data
from workers.training.metrics import Evaluation, evaluate_scores
from workers.training.predictions import Predictions, load_model, predict_data
from workers.training.report import write_report

DEMO_NOTE = (
    "This model includes a DEMO bundle (random weights, NOT TRAINED): its figures mean nothing."
)


def evaluations_of(
    predictions: Predictions, bootstrap: int = 1000, seed: int = 0
) -> tuple[Evaluation, list[Evaluation]]:
    """The ensemble's evaluation at its thresholds, and each member's at its own (only when
    there is more than one member)."""
    ensemble = predictions.ensemble
    whole = evaluate_scores(
        ensemble.info.name,
        predictions.labels,
        predictions.truth,
        predictions.scores,
        predictions.thresholds,
        bootstrap=bootstrap,
        seed=seed,
    )
    members = []
    if len(predictions.members) > 1:
        columns = {label: i for i, label in enumerate(predictions.labels)}
        for member in predictions.members:
            truth = predictions.truth[:, [columns[label] for label in member.labels]]
            members.append(
                evaluate_scores(
                    f"{member.name} {member.version}",
                    member.labels,
                    truth,
                    member.scores,
                    member.thresholds,
                    bootstrap=bootstrap,
                    seed=seed,
                )
            )
    return whole, members


def evaluate_model(
    model_paths: Sequence[Path],
    data_path: Path,
    *,
    images_root: Path | None = None,
    fmt: str | None = None,
    labels: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    report_dir: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a bundle or ensemble on labelled data; write the report when asked; return the
    JSON-able result."""
    ensemble, _config, _folder = load_model(model_paths, weights, device)
    data = read_labelled_data(data_path, images_root=images_root, fmt=fmt, labels=labels)
    predictions = predict_data(ensemble, data, progress=progress)
    whole, members = evaluations_of(predictions, bootstrap, seed)
    result = _result_json(predictions, data, whole, members)
    if report_dir is not None:
        notes = _notes(predictions, data)
        bundles = ", ".join(f"{m.name} {m.version}" for m in ensemble.info.members)
        title = f"Evaluation of {bundles} ({ensemble.info.version}) on {data_path.name}"
        report = write_report(report_dir, [whole, *members], title, notes=notes)
        result["report"] = str(report)
    return result


def _notes(predictions: Predictions, data: LabelledData) -> list[str]:
    notes = []
    if predictions.ensemble.demo:
        notes.append(DEMO_NOTE)
    summary = ", ".join(f"{what}: {count}" for what, count in data.summary())
    notes.append(f"Data: {data.format} from {data.source} ({summary}).")
    unreadable = len(predictions.images.skipped)
    if unreadable:
        notes.append(f"{unreadable} images could not be read as the node reads them: skipped.")
    missing = sorted(set(data.labels) - set(predictions.labels))
    if missing:
        notes.append(f"Labels in the data that the model does not have: {', '.join(missing)}.")
    return notes + list(data.notes)


def _result_json(
    predictions: Predictions, data: LabelledData, whole: Evaluation, members: list[Evaluation]
) -> dict[str, Any]:
    info = predictions.ensemble.info
    evaluation = whole.to_json()
    return {
        "model": {
            "name": info.name,
            "version": info.version,
            "demo": info.demo,
            "bundles": [f"{m.name} {m.version}" for m in info.members],
        },
        "per_finding": evaluation["per_finding"],
        "mean_auc": evaluation["mean_auc"],
        "n_images": evaluation["n_images"],
        "members": [m.to_json() for m in members],
        "data": data.summary_json(),
        "unreadable": [
            {"key": s.key, "row": s.row, "reason_code": s.reason_code, "reason": s.reason}
            for s in predictions.images.skipped
        ],
    }


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_result(result: dict[str, Any], out: TextIO | None = None) -> None:
    """The per-finding table for people."""
    out = out or sys.stdout
    model = result["model"]
    demo = "  [DEMO MODEL - NOT TRAINED]" if model["demo"] else ""
    bundles = ", ".join(model["bundles"])
    print(
        f"{bundles} ({model['name']} {model['version']}){demo}: {result['n_images']} images",
        file=out,
    )
    header = (
        f"{'finding':<26} {'pos':>5} {'neg':>5} {'AUC':>6} {'95% CI':>13} {'acc':>6} "
        f"{'sens':>6} {'spec':>6} {'PPV':>6} {'NPV':>6} {'thr':>6}"
    )
    print(header, file=out)
    for row in result["per_finding"]:
        low, high = row["auc_ci_low"], row["auc_ci_high"]
        ci = "-" if low is None or high is None else f"{low:.3f}-{high:.3f}"
        print(
            f"{row['label']:<26} {row['n_positive']:>5} {row['n_negative']:>5} "
            f"{_figure(row['auc']):>6} {ci:>13} {_figure(row['accuracy']):>6} "
            f"{_figure(row['sensitivity']):>6} {_figure(row['specificity']):>6} "
            f"{_figure(row['ppv']):>6} {_figure(row['npv']):>6} {row['threshold']:>6.3f}",
            file=out,
        )
    print(f"mean AUC {_figure(result['mean_auc'])}", file=out)
    data = result["data"]
    skipped = ", ".join(f"{code} {n}" for code, n in data["skipped_counts"].items()) or "none"
    print(f"data: {data['used']} used; skipped: {skipped}", file=out)
    if result["unreadable"]:
        print(f"  {len(result['unreadable'])} images unreadable as the node reads them", file=out)
    for member in result["members"]:
        print(f"  member {member['name']}: mean AUC {_figure(member['mean_auc'])}", file=out)
    if "report" in result:
        print(f"report: {result['report']}", file=out)
    print("AI model evaluation; not a diagnosis.", file=out)


def print_json(result: dict[str, Any], out: TextIO | None = None) -> None:
    """One JSON object (NaN never appears: undefined figures are null)."""
    out = out or sys.stdout
    print(json.dumps(result, indent=2, allow_nan=False), file=out)
