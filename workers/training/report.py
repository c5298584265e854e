"""A self-contained HTML evaluation report with ROC, precision-recall and calibration plots.

Plots are drawn on ``matplotlib.figure.Figure`` objects (Agg renderer, no pyplot state, so it
is thread-safe) and written as PNG files beside ``report.html``; the HTML embeds the same PNGs
as base64 ``data:`` URIs and uses inline CSS only, so the one file can be mailed or archived
and opens offline. Reliability diagrams follow scikit-learn's ``calibration_curve``.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from workers.training.metrics import Evaluation, FindingMetrics

NOTICE = "AI model evaluation — not a diagnosis; figures on small data are not clinical evidence"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
.notice { background: #fff3cd; border: 2px solid #d39e00; padding: .8em 1em; font-weight: bold;
  font-size: 1.1em; margin: 1em 0; }
ul.notes { margin: .5em 0 1.5em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #bbb; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
.plots { display: flex; flex-wrap: wrap; gap: .5em; }
.plots img { width: 380px; height: auto; border: 1px solid #ddd; }
.skip { color: #666; font-style: italic; }
"""


def slug(label: str) -> str:
    """File-name form of a label: lowercase, runs of non-alphanumerics become one "-"."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "label"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _auc_ci(m: FindingMetrics) -> str:
    if m.auc is None:
        return "— (one class)"
    if m.auc_ci_low is None or m.auc_ci_high is None:
        return _fmt(m.auc)
    return f"{_fmt(m.auc)} ({_fmt(m.auc_ci_low)}\u2013{_fmt(m.auc_ci_high)})"


def _mpl_text(text: str) -> str:
    """Plain text for matplotlib: "$" would otherwise start mathtext."""
    return text.replace("$", r"\$")


# --- plots ---------------------------------------------------------------------------------

_Curve = tuple[str, np.ndarray, np.ndarray]  # evaluation name, truth (0/1), scores


def _curves(evaluations: Sequence[Evaluation], label: str) -> list[_Curve]:
    """Each evaluation's known-truth rows for ``label``, where both classes are present."""
    out = []
    for ev in evaluations:
        if label not in ev.labels:
            continue
        j = ev.labels.index(label)
        known = ~np.isnan(ev.truth[:, j])
        t, s = ev.truth[known, j].astype(np.int64), ev.scores[known, j]
        if 0 < t.sum() < t.size:
            out.append((ev.name, t, s))
    return out


def _metric(evaluations: Sequence[Evaluation], name: str, label: str) -> FindingMetrics | None:
    for ev in evaluations:
        if ev.name == name:
            return next((m for m in ev.per_finding if m.label == label), None)
    return None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(label: str, kind: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(5.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(_mpl_text(f"{label} — {kind}"), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _roc_plot(label: str, curves: list[_Curve], evaluations: Sequence[Evaluation]) -> bytes:
    fig, ax = _figure(label, "ROC", "1 - specificity", "Sensitivity")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    for name, t, s in curves:
        fpr, tpr, _ = roc_curve(t, s)
        m = _metric(evaluations, name, label)
        auc = _fmt(m.auc if m else None)
        ax.plot(fpr, tpr, linewidth=1.4, label=_mpl_text(f"{name} (AUC {auc})"))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def _pr_plot(label: str, curves: list[_Curve], evaluations: Sequence[Evaluation]) -> bytes:
    fig, ax = _figure(label, "precision-recall", "Recall (sensitivity)", "Precision (PPV)")
    for name, t, s in curves:
        precision, recall, _ = precision_recall_curve(t, s)
        m = _metric(evaluations, name, label)
        ap = _fmt(m.average_precision if m else None)
        ax.step(
            recall, precision, where="post", linewidth=1.4, label=_mpl_text(f"{name} (AP {ap})")
        )
    prevalence = curves[0][1].mean()
    ax.axhline(prevalence, linestyle="--", color="grey", linewidth=0.8)
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def _calibration_plot(label: str, curves: list[_Curve], evaluations: Sequence[Evaluation]) -> bytes:
    fig, ax = _figure(label, "calibration", "Mean predicted probability", "Fraction positive")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    for name, t, s in curves:
        frac, mean_pred = calibration_curve(t, np.clip(s, 0.0, 1.0), n_bins=10, strategy="uniform")
        ax.plot(mean_pred, frac, marker="o", markersize=3, linewidth=1.2, label=_mpl_text(name))
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


_Plotter = Callable[[str, list[_Curve], Sequence[Evaluation]], bytes]
_PLOTS: tuple[tuple[str, str, _Plotter], ...] = (
    ("roc", "ROC curve", _roc_plot),
    ("pr", "Precision-recall curve", _pr_plot),
    ("calibration", "Reliability diagram", _calibration_plot),
)


# --- HTML ----------------------------------------------------------------------------------

_COLUMNS = (
    "Finding",
    "n positive",
    "n negative",
    "AUC (95 % CI)",
    "Average precision",
    "Accuracy",
    "Sensitivity",
    "Specificity",
    "PPV",
    "NPV",
    "Brier",
    "Threshold",
    "TP / FP / TN / FN",
)


def _row(cells: Sequence[str], tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{_esc(c)}</{tag}>" for c in cells) + "</tr>"


def _metrics_table(ev: Evaluation) -> str:
    rows = [_row(_COLUMNS, "th")]
    for m in ev.per_finding:
        rows.append(
            _row(
                [
                    m.label,
                    str(m.n_positive),
                    str(m.n_negative),
                    _auc_ci(m),
                    _fmt(m.average_precision),
                    _fmt(m.accuracy),
                    _fmt(m.sensitivity),
                    _fmt(m.specificity),
                    _fmt(m.ppv),
                    _fmt(m.npv),
                    _fmt(m.brier),
                    _fmt(m.threshold),
                    f"{m.tp} / {m.fp} / {m.tn} / {m.fn}",
                ]
            )
        )
    return (
        f"<h2>{_esc(ev.name)}</h2>"
        f"<p>{_esc(ev.truth.shape[0])} images; mean AUC <strong>{_esc(_fmt(ev.mean_auc))}</strong>"
        " (over findings with both classes). AUC interval: percentile bootstrap.</p>"
        f"<table>{''.join(rows)}</table>"
    )


def _all_labels(evaluations: Sequence[Evaluation]) -> list[str]:
    return list(dict.fromkeys(label for ev in evaluations for label in ev.labels))


def _comparison_table(evaluations: Sequence[Evaluation]) -> str:
    rows = [_row(["Finding", *(f"AUC {ev.name}" for ev in evaluations)], "th")]
    for label in _all_labels(evaluations):
        cells = [_metric(evaluations, ev.name, label) for ev in evaluations]
        rows.append(_row([label, *(_fmt(m.auc) if m else "—" for m in cells)]))
    rows.append(_row(["Mean AUC", *(_fmt(ev.mean_auc) for ev in evaluations)]))
    return f"<h2>Comparison</h2><table>{''.join(rows)}</table>"


def _unique_slugs(labels: Sequence[str]) -> dict[str, str]:
    """Label to file slug; a repeated slug gets "-2", "-3", ..."""
    seen: dict[str, int] = {}
    out = {}
    for label in labels:
        base = slug(label)
        seen[base] = seen.get(base, 0) + 1
        out[label] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return out


def _plots_section(out_dir: Path, evaluations: Sequence[Evaluation]) -> str:
    """Write each label's PNGs and return their HTML (embedded as base64 data URIs)."""
    parts = ["<h2>Plots</h2>"]
    labels = _all_labels(evaluations)
    for label, name in _unique_slugs(labels).items():
        parts.append(f"<h3>{_esc(label)}</h3>")
        curves = _curves(evaluations, label)
        if not curves:
            parts.append(
                '<p class="skip">No plots: only one class (all positive or all negative) among '
                "the images with known truth.</p>"
            )
            continue
        imgs = []
        for kind, alt, plot in _PLOTS:
            data = plot(label, curves, evaluations)
            (out_dir / f"{kind}-{name}.png").write_bytes(data)
            uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            imgs.append(f'<img src="{uri}" alt="{_esc(f"{alt} for {label}")}">')
        parts.append(f'<div class="plots">{"".join(imgs)}</div>')
    return "".join(parts)


def write_report(
    out_dir: Path,
    evaluations: Sequence[Evaluation],
    title: str,
    notes: Sequence[str] = (),
    extra_sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write PNG plots and one self-contained ``report.html`` into out_dir; return its path.

    ``extra_sections`` are (title, HTML fragment) pairs; the fragment must already be escaped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    body = [
        f"<h1>{_esc(title)}</h1>",
        f'<div class="notice">{_esc(NOTICE)}</div>',
    ]
    if notes:
        body.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    body.extend(_metrics_table(ev) for ev in evaluations)
    if len(evaluations) > 1:
        body.append(_comparison_table(evaluations))
    body.append(_plots_section(out_dir, evaluations))
    body.extend(
        f"<section><h2>{_esc(t)}</h2>{fragment}</section>" for t, fragment in extra_sections
    )
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


__all__ = ["NOTICE", "slug", "write_report"]
