"""``cxr-node models evaluate --ledger --labels FILE``: local validation on real traffic.

Ground truth that a site exports from its reports (a CSV keyed by accession number or Study
Instance UID, one column per finding: 1, 0, -1 uncertain, blank unknown) is matched against
what the node said for those studies (the ledger's findings: per label, the highest
probability over the study's images, at its stored threshold), and evaluated per model
version: local sensitivity, specificity, PPV and NPV on the site's own patients. The report adds
drift: positive rate and score distribution per finding per week.
"""

from __future__ import annotations

import csv
import html
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxr_node.ledger import Ledger
from cxr_node.ledger.validation import AnalysedStudyFindings, DriftRow
from cxr_node.settings import Settings
from workers.training.datasets import DataError, label_value
from workers.training.metrics import Evaluation, evaluate_scores
from workers.training.report import write_report

ACCESSION_COLUMNS = ("AccessionNumber", "accession_number", "Accession Number", "accession")
STUDY_UID_COLUMNS = ("StudyInstanceUID", "study_instance_uid", "Study Instance UID", "study_uid")


def read_ground_truth(path: Path) -> tuple[str, dict[str, dict[str, float]]]:
    """(key kind "accession" or "study_uid", key -> label -> 1/0/NaN) from the site's CSV."""
    with path.open(newline="", encoding="utf-8-sig") as stream:
        reader = csv.DictReader(stream)
        header = list(reader.fieldnames or [])
        key_column = next((c for c in ACCESSION_COLUMNS if c in header), None)
        kind = "accession"
        if key_column is None:
            key_column = next((c for c in STUDY_UID_COLUMNS if c in header), None)
            kind = "study_uid"
        if key_column is None:
            raise DataError(
                f"{path}, line 1: no key column; expected one of "
                f"{', '.join(ACCESSION_COLUMNS + STUDY_UID_COLUMNS)}"
            )
        keys = set(ACCESSION_COLUMNS) | set(STUDY_UID_COLUMNS)
        labels = [c for c in header if c not in keys and c.strip()]
        truth: dict[str, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            key = (row.get(key_column) or "").strip()
            if not key:
                raise DataError(f"{path}, line {line}: the {key_column} is empty")
            if key in truth:
                raise DataError(f"{path}, line {line}: {key_column} repeated")
            values = {}
            for label in labels:  # CheXpert values; uncertain (-1) counts as unknown
                values[label] = label_value(path, line, label, row.get(label) or "", "ignore")
            truth[key] = values
    return kind, truth


def _key(study: AnalysedStudyFindings, kind: str) -> str | None:
    return study.accession_number if kind == "accession" else study.study_uid


def _evaluate_version(
    name: str, studies: Sequence[AnalysedStudyFindings], truth: dict[str, dict[str, float]],
    kind: str, bootstrap: int, seed: int,
) -> Evaluation | None:  # fmt: skip
    truth_labels = {label for row in truth.values() for label in row}
    labels = sorted({label for s in studies for label in s.findings} & truth_labels)
    if not labels:
        return None
    t = np.full((len(studies), len(labels)), np.nan)
    scores = np.full((len(studies), len(labels)), np.nan)
    thresholds: dict[str, Counter[float]] = defaultdict(Counter)
    for row, study in enumerate(studies):
        for column, label in enumerate(labels):
            answer = study.findings.get(label)
            if answer is None:
                continue
            probability, threshold, present = answer
            # the node's own call counts: a stored (rounded) probability that lands on the other
            # side of the threshold is nudged back to the side the node decided
            if present and probability < threshold:
                probability = threshold
            elif not present and probability >= threshold:
                probability = float(np.nextafter(threshold, 0.0))
            scores[row, column] = probability
            thresholds[label][threshold] += 1
            t[row, column] = truth[_key(study, kind) or ""].get(label, np.nan)
    t[np.isnan(scores)] = np.nan
    scores = np.nan_to_num(scores, nan=0.0)
    return evaluate_scores(
        name,
        labels,
        t,
        scores,
        [thresholds[label].most_common(1)[0][0] if thresholds[label] else 0.5 for label in labels],
        bootstrap=bootstrap,
        seed=seed,
    )


def _drift_html(rows: Sequence[DriftRow]) -> str:
    if not rows:
        return "<p>No analysed studies in the period.</p>"
    cells = "".join(
        f"<tr><td>{html.escape(r.week)}</td><td>{html.escape(r.label)}</td><td>{r.studies}</td>"
        f"<td>{r.positives}</td><td>{r.positive_rate:.3f}</td><td>{r.mean_probability:.3f}</td>"
        f"<td>{' / '.join(f'{q:.3f}' for q in r.score_quantiles)}</td></tr>"
        for r in rows
    )
    return (
        "<table><tr><th>week</th><th>finding</th><th>studies</th><th>positive</th>"
        "<th>positive rate</th><th>mean probability</th><th>p10 / p50 / p90</th></tr>"
        f"{cells}</table>"
    )


def evaluate_ledger(
    settings: Settings,
    labels_file: Path,
    *,
    report_dir: Path | None = None,
    weeks: int = 12,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Match the site's ground truth to the node's findings; evaluate per model version."""
    kind, truth = read_ground_truth(labels_file)
    ledger = Ledger(settings.ledger)
    try:
        analysed = ledger.analysed_findings()
        drift = ledger.weekly_drift(weeks=weeks)
    finally:
        ledger.close()
    matched = [s for s in analysed if (_key(s, kind) or "") in truth]
    by_version: dict[tuple[str, str, bool], list[AnalysedStudyFindings]] = defaultdict(list)
    for study in matched:
        by_version[
            (study.model_name or "?", study.model_version or "?", bool(study.model_demo))
        ].append(study)
    evaluations = []
    versions = []
    for (name, version, demo), studies in sorted(by_version.items()):
        title = f"{name} {version}" + (" [DEMO - NOT TRAINED]" if demo else "")
        evaluation = _evaluate_version(title, studies, truth, kind, bootstrap, seed)
        shadow = sum(1 for s in studies if s.shadow)
        versions.append(
            {
                "model_name": name,
                "model_version": version,
                "demo": demo,
                "studies": len(studies),
                "shadow_studies": shadow,
                **(evaluation.to_json() if evaluation else {"per_finding": [], "mean_auc": None}),
            }
        )
        if evaluation is not None:
            evaluations.append(evaluation)
    matched_keys = {_key(s, kind) for s in matched}
    result: dict[str, Any] = {
        "key": kind,
        "ground_truth_studies": len(truth),
        "matched_studies": len(matched),
        "ground_truth_without_result": len(set(truth) - matched_keys),
        "results_without_ground_truth": len(analysed) - len(matched),
        "versions": versions,
        "drift": [r.__dict__ | {"score_quantiles": list(r.score_quantiles)} for r in drift],
    }
    if report_dir is not None:
        notes = [
            f"{len(matched)} of {len(truth)} studies with ground truth matched node results by "
            f"{kind.replace('_', ' ')}; one evaluation per model version.",
            "Local validation on this site's patients; AI-generated results, not a diagnosis.",
        ]
        if any(v["demo"] for v in versions):
            notes.append("DEMO model versions (random weights, not trained) are included.")
        report = write_report(
            report_dir,
            evaluations,
            "Local validation of cxr-node results against site ground truth",
            notes=notes,
            extra_sections=[("Drift: per finding per week", _drift_html(drift))],
        )
        result["report"] = str(report)
    return result
