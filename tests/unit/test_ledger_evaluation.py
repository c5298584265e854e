"""``cxr-node models evaluate --ledger --labels FILE``: the site's ground truth against what the
node said on real traffic, per model version, with drift (issue 14). Made-up studies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from cxr_node.cli import main
from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from tests.unit.test_ledger_validation import analyse

# (accession, truth of Pneumothorax, probability) for model 1.0; positive at 0.5
VERSION_1 = [
    ("A1", 1, 0.91), ("A2", 1, 0.72), ("A3", 1, 0.41), ("A4", 0, 0.12), ("A5", 0, 0.33),
    ("A6", 0, 0.58), ("A7", 0, 0.05), ("A8", 1, 0.66), ("A9", 0, 0.21), ("A10", 0, 0.47),
]  # fmt: skip
VERSION_2 = [("B1", 1, 0.81), ("B2", 0, 0.22), ("B3", 1, 0.35), ("B4", 0, 0.61)]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A node's data folder whose ledger holds analysed studies of two model versions, and
    one study nobody has reported yet."""
    ledger = Ledger(Settings(data_dir=tmp_path).ledger)
    try:
        for version, rows in (("1.0", VERSION_1), ("2.0", VERSION_2)):
            for accession, _truth, probability in rows:
                images = [{"Pneumothorax": probability, "Effusion": 0.1}]
                analyse(
                    ledger, f"9.{accession}", images, accession=accession, version=version,
                    shadow=version == "2.0",
                )  # fmt: skip
        analyse(ledger, "9.UNREPORTED", [{"Pneumothorax": 0.9}], accession="Z9")
    finally:
        ledger.close()
    truth = tmp_path / "ground-truth.csv"
    lines = ["AccessionNumber,Pneumothorax,Effusion"]
    lines += [f"{a},{t},0" for a, t, _ in VERSION_1 + VERSION_2]
    lines += ["A404,1,"]  # a report for a study the node never saw
    truth.write_text("\n".join(lines) + "\n")
    return tmp_path


def _expected(rows: list[tuple[str, int, float]]) -> dict[str, float]:
    truth = np.array([t for _, t, _ in rows])
    scores = np.array([p for _, _, p in rows])
    tn, fp, fn, tp = confusion_matrix(truth, scores >= 0.5).ravel()
    return {
        "auc": roc_auc_score(truth, scores),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "npv": tn / (tn + fn),
        "ppv": tp / (tp + fp),
    }


def test_ground_truth_is_matched_and_evaluated_per_model_version(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = site / "report"
    args = ["models", "evaluate", "--ledger", "--labels", str(site / "ground-truth.csv")]
    assert main([*args, "--json", "--report", str(report), "--data-dir", str(site)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["key"] == "accession"
    assert result["matched_studies"] == 14
    assert result["ground_truth_without_result"] == 1
    assert result["results_without_ground_truth"] == 1
    versions = {v["model_version"]: v for v in result["versions"]}
    assert versions["1.0"]["studies"] == 10 and versions["1.0"]["shadow_studies"] == 0
    assert versions["2.0"]["shadow_studies"] == 4
    for version, rows in (("1.0", VERSION_1), ("2.0", VERSION_2)):
        figures = {f["label"]: f for f in versions[version]["per_finding"]}
        pneumothorax = figures["Pneumothorax"]
        for key, value in _expected(rows).items():
            assert pneumothorax[key] == pytest.approx(value), (version, key)
        assert figures["Effusion"]["auc"] is None  # no positive report: no AUC, no crash
        assert figures["Effusion"]["n_negative"] == len(rows)
    drift = {(row["label"], row["week"]) for row in result["drift"]}
    assert {label for label, _ in drift} == {"Pneumothorax", "Effusion"}
    page = (report / "report.html").read_text()
    assert "Drift: per finding per week" in page and "1.0" in page and "2.0" in page
    for accession, _, _ in VERSION_1:
        assert f">{accession}<" not in page  # no accession numbers in the report


def test_ground_truth_with_both_uid_columns_is_keyed_by_accession(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    both = site / "both.csv"
    rows = [f"{a},9.{a},{t}" for a, t, _ in VERSION_1]
    both.write_text("AccessionNumber,StudyInstanceUID,Pneumothorax\n" + "\n".join(rows) + "\n")
    args = ["models", "evaluate", "--ledger", "--labels", str(both), "--json"]
    assert main([*args, "--data-dir", str(site)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["key"] == "accession" and result["matched_studies"] == 10
    labels = {f["label"] for v in result["versions"] for f in v["per_finding"]}
    assert labels == {"Pneumothorax"}


def test_a_ground_truth_file_without_a_key_column_is_refused_by_name(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = site / "no-key.csv"
    bad.write_text("Patient,Pneumothorax\nX,1\n")
    args = ["models", "evaluate", "--ledger", "--labels", str(bad), "--data-dir", str(site)]
    assert main(args) == 2
    assert "no-key.csv, line 1: no key column" in capsys.readouterr().err
