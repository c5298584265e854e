"""The self-contained HTML evaluation report of workers.training.report (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from workers.training.metrics import Evaluation, evaluate_scores
from workers.training.report import NOTICE, slug, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["Cardiomegaly", "<b>x", "Pleural Effusion", "Rare"]


def _evaluations() -> list[Evaluation]:
    rng = np.random.default_rng(11)
    n = 150
    truth = (rng.random((n, len(LABELS))) < 0.35).astype(float)
    truth[:, 3] = 0.0  # "Rare": no positives, no plots
    truth[::9, 0] = np.nan
    out = []
    for i, name in enumerate(("member 1", "ensemble")):
        scores = np.clip(
            (0.2 + 0.2 * i) * np.nan_to_num(truth) + 0.6 * rng.random(truth.shape), 0, 1
        )
        out.append(evaluate_scores(name, LABELS, truth, scores, [0.5] * len(LABELS), bootstrap=50))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[Evaluation]]:
    out = tmp_path_factory.mktemp("report")
    evaluations = _evaluations()
    path = write_report(
        out,
        evaluations,
        "Site evaluation <2024>",
        notes=["validation split: 20 % & held out"],
        extra_sections=[("Drift", "<p>weekly drift table</p>")],
    )
    return path, path.read_text(encoding="utf-8"), evaluations


def test_slug() -> None:
    assert slug("Pleural Effusion") == "pleural-effusion"
    assert slug("<b>x") == "b-x"
    assert slug("Enlarged Cardiomediastinum/2") == "enlarged-cardiomediastinum-2"
    assert slug("???") == "label"


def test_report_tables(report: tuple[Path, str, list[Evaluation]]) -> None:
    path, page, evaluations = report
    assert path.name == "report.html"
    assert NOTICE in page
    assert "Site evaluation &lt;2024&gt;" in page
    assert "20 % &amp; held out" in page
    for ev in evaluations:
        assert ev.mean_auc is not None
        assert f"{ev.mean_auc:.3f}" in page
        for m in ev.per_finding:
            if m.auc is not None:
                assert m.auc_ci_low is not None and m.auc_ci_high is not None
                assert f"{m.auc:.3f} ({m.auc_ci_low:.3f}\u2013{m.auc_ci_high:.3f})" in page
                assert f"{m.sensitivity:.3f}" in page
    assert "<h2>Comparison</h2>" in page
    assert "AUC member 1" in page and "AUC ensemble" in page
    assert page.rstrip().endswith(
        "<section><h2>Drift</h2><p>weekly drift table</p></section></body></html>"
    )


def test_report_is_self_contained(report: tuple[Path, str, list[Evaluation]]) -> None:
    _, page, _ = report
    assert "http://" not in page and "https://" not in page
    targets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert targets and all(t.startswith("data:image/png;base64,") for t in targets)
    assert page.count('src="data:image/png;base64,') == 3 * 3  # 3 labels with plots x 3 kinds
    assert "<link" not in page and "<script" not in page


def test_report_escapes_labels(report: tuple[Path, str, list[Evaluation]]) -> None:
    _, page, _ = report
    assert "&lt;b&gt;x" in page
    assert "<b>x" not in page


def test_report_png_files(report: tuple[Path, str, list[Evaluation]]) -> None:
    path, page, _ = report
    for name in ("cardiomegaly", "b-x", "pleural-effusion"):
        for kind in ("roc", "pr", "calibration"):
            png = path.parent / f"{kind}-{name}.png"
            assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert not list(path.parent.glob("*-rare.png"))
    rare = page[page.index("<h3>Rare</h3>") :]
    assert "only one class" in rare.split("<h3>")[1]


def test_single_evaluation_has_no_comparison(tmp_path: Path) -> None:
    path = write_report(tmp_path, _evaluations()[:1], "one")
    page = path.read_text(encoding="utf-8")
    assert "Comparison" not in page
    assert (tmp_path / "roc-cardiomegaly.png").exists()
