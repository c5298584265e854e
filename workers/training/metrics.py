"""Per-finding evaluation numbers, operating points and ensemble member weights.

Pure numpy/scipy/scikit-learn (no torch). Conventions used throughout:

- truth is 0/1 with NaN meaning "unknown/ignored" (uncertain or unmentioned labels); such rows
  are dropped per finding;
- a finding is predicted positive when ``score >= threshold`` (the node's rule);
- AUC is scikit-learn's ``roc_auc_score``; its 95 % interval is a percentile bootstrap over
  images (Efron & Tibshirani 1993), not DeLong. Each resample's AUC is the Mann-Whitney U
  statistic with average ranks for ties, computed from resample counts so that 1000 resamples
  of 10,000 images take well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import optimize, stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

_CHUNK = 128  # bootstrap resamples per vectorised batch (memory ~ _CHUNK x n floats)


def _opt(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class FindingMetrics:
    """Evaluation of one finding on one set of images (rows with unknown truth dropped)."""

    label: str
    n_positive: int
    n_negative: int
    auc: float | None
    auc_ci_low: float | None
    auc_ci_high: float | None
    average_precision: float | None
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    threshold: float
    brier: float | None
    tp: int
    fp: int
    tn: int
    fn: int

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (Python floats, ints and None)."""
        return {
            "label": self.label,
            "n_positive": int(self.n_positive),
            "n_negative": int(self.n_negative),
            "auc": _opt(self.auc),
            "auc_ci_low": _opt(self.auc_ci_low),
            "auc_ci_high": _opt(self.auc_ci_high),
            "average_precision": _opt(self.average_precision),
            "accuracy": _opt(self.accuracy),
            "sensitivity": _opt(self.sensitivity),
            "specificity": _opt(self.specificity),
            "ppv": _opt(self.ppv),
            "npv": _opt(self.npv),
            "threshold": float(self.threshold),
            "brier": _opt(self.brier),
            "tp": int(self.tp),
            "fp": int(self.fp),
            "tn": int(self.tn),
            "fn": int(self.fn),
        }


@dataclass
class Evaluation:
    """One model's (or ensemble's) evaluation over several findings, arrays kept for plots."""

    name: str
    per_finding: list[FindingMetrics]
    mean_auc: float | None
    labels: list[str]
    truth: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict: name, per-finding metrics, mean AUC and image count."""
        return {
            "name": self.name,
            "per_finding": [m.to_json() for m in self.per_finding],
            "mean_auc": _opt(self.mean_auc),
            "n_images": int(self.truth.shape[0]),
        }


# --- helpers -------------------------------------------------------------------------------


def _known(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop rows whose truth is NaN; return (truth as 0/1 ints, scores as floats)."""
    t = np.asarray(truth, dtype=float).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if t.shape != s.shape:
        raise ValueError(f"truth and scores differ in length: {t.shape[0]} vs {s.shape[0]}")
    keep = ~np.isnan(t)
    t, s = t[keep], s[keep]
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("truth must be 0, 1 or NaN")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite where truth is known")
    return t.astype(np.int64), s


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def rank_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """AUC as the Mann-Whitney U statistic with average ranks (equals ``roc_auc_score``).

    truth must already be 0/1 without NaN; returns None when a class is missing.
    """
    t = np.asarray(truth).astype(bool)
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(scores)
    u = float(ranks[t].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _grouped_auc(pos_w: np.ndarray, neg_w: np.ndarray) -> np.ndarray:
    """AUC per row from positive/negative weights per score group (groups ascending by score).

    A positive beats every negative in a lower group and ties count one half: Mann-Whitney U
    with average ranks. NaN where a row lacks a class.
    """
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    u = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    n_p, n_n = pos_w.sum(axis=1), neg_w.sum(axis=1)
    valid = (n_p > 0) & (n_n > 0)
    return np.where(valid, u / np.where(valid, n_p * n_n, 1.0), np.nan)


def bootstrap_auc(truth: np.ndarray, scores: np.ndarray, bootstrap: int, seed: int) -> np.ndarray:
    """AUCs of ``bootstrap`` resamples of the images with replacement (NaN: one class only).

    Indices come from ``numpy.random.default_rng(seed)``, so the result is reproducible; each
    resample is reduced to weights per distinct score, so a batch is a few bincounts.
    """
    t = np.asarray(truth).astype(np.float64)
    n = t.size
    if bootstrap <= 0 or n == 0:
        return np.empty(0)
    _, group_of = np.unique(np.asarray(scores, dtype=float), return_inverse=True)
    n_groups = int(group_of.max()) + 1
    rng = np.random.default_rng(seed)
    out = np.empty(bootstrap)
    for start in range(0, bootstrap, _CHUNK):
        size = min(_CHUNK, bootstrap - start)
        idx = rng.integers(0, n, size=(size, n))
        flat = (group_of[idx] + (np.arange(size) * n_groups)[:, None]).ravel()
        total = np.bincount(flat, minlength=size * n_groups).reshape(size, n_groups)
        pos_w = np.bincount(flat, weights=t[idx].ravel(), minlength=size * n_groups)
        pos_w = pos_w.reshape(size, n_groups)
        out[start : start + size] = _grouped_auc(pos_w, total - pos_w)
    return out


def _percentile_ci(aucs: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval over the resamples that had both classes."""
    valid = aucs[~np.isnan(aucs)]
    if valid.size == 0:
        return None, None
    alpha = (1.0 - confidence) / 2.0
    low, high = np.percentile(valid, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(low), float(high)


# --- per finding ---------------------------------------------------------------------------


def finding_metrics(
    label: str,
    truth: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> FindingMetrics:
    """Counts, rates, AUC with a percentile-bootstrap interval, AP and Brier score for one finding.

    Rows with NaN truth are dropped; positive prediction is ``score >= threshold``. AUC, its
    interval and AP are None when only one class is present; a rate is None when its
    denominator is zero (e.g. PPV without predicted positives).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    t, s = _known(truth, scores)
    pred = s >= threshold
    pos = t == 1
    tp, fp = int((pred & pos).sum()), int((pred & ~pos).sum())
    tn, fn = int((~pred & ~pos).sum()), int((~pred & pos).sum())
    n_pos, n_neg = tp + fn, tn + fp
    both = n_pos > 0 and n_neg > 0
    auc = float(roc_auc_score(t, s)) if both else None
    low, high = (
        _percentile_ci(bootstrap_auc(t, s, bootstrap, seed), confidence)
        if both
        else (
            None,
            None,
        )
    )
    return FindingMetrics(
        label=label,
        n_positive=n_pos,
        n_negative=n_neg,
        auc=auc,
        auc_ci_low=low,
        auc_ci_high=high,
        average_precision=float(average_precision_score(t, s)) if n_pos > 0 else None,
        accuracy=_ratio(tp + tn, t.size),
        sensitivity=_ratio(tp, n_pos),
        specificity=_ratio(tn, n_neg),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        threshold=float(threshold),
        brier=float(np.mean((s - t) ** 2)) if t.size else None,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def evaluate_scores(
    name: str,
    labels: Sequence[str],
    truth: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
    bootstrap: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Evaluate (N, L) scores against (N, L) truth (NaN = unknown), one threshold per label."""
    t = np.asarray(truth, dtype=float)
    s = np.asarray(scores, dtype=float)
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"truth and scores must both be (N, L); got {t.shape} and {s.shape}")
    if not len(labels) == len(thresholds) == t.shape[1]:
        raise ValueError(
            f"{len(labels)} labels and {len(thresholds)} thresholds for {t.shape[1]} columns"
        )
    per = [
        finding_metrics(lab, t[:, j], s[:, j], float(thresholds[j]), bootstrap, seed)
        for j, lab in enumerate(labels)
    ]
    aucs = [m.auc for m in per if m.auc is not None]
    mean_auc = float(np.mean(aucs)) if aucs else None
    return Evaluation(name, per, mean_auc, list(labels), t, s)


# --- operating points ----------------------------------------------------------------------


def _check_target(target: float | None) -> float:
    if target is None or not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    return float(target)


def _youden(t: np.ndarray, s: np.ndarray) -> float:
    """Threshold maximising J = sensitivity + specificity - 1 (Youden 1950).

    Ties go to the highest threshold (fewest positive calls).
    """
    fpr, tpr, thr = roc_curve(t, s, drop_intermediate=False)
    return float(thr[int(np.argmax(tpr - fpr))])


def _for_sensitivity(t: np.ndarray, s: np.ndarray, target: float) -> float:
    """Highest threshold with mean(positive scores >= threshold) >= target."""
    pos = np.sort(s[t == 1])
    cand = np.unique(pos)
    sens = (pos.size - np.searchsorted(pos, cand, side="left")) / pos.size
    return float(cand[sens >= target].max())  # the lowest candidate has sensitivity 1


def _for_specificity(t: np.ndarray, s: np.ndarray, target: float) -> float:
    """Lowest threshold (a score value, or 1.0) with mean(negative scores < threshold) >= target."""
    neg = np.sort(s[t == 0])
    cand = np.unique(np.append(s, 1.0))
    spec = np.searchsorted(neg, cand, side="left") / neg.size
    ok = cand[spec >= target]
    if ok.size == 0:
        raise ValueError(f"no threshold in [0, 1] reaches specificity {target}")
    return float(ok.min())


def choose_threshold(
    truth: np.ndarray,
    scores: np.ndarray,
    method: Literal["youden", "sensitivity", "specificity"],
    target: float | None = None,
) -> float:
    """Operating point for the rule ``score >= threshold``; scores must be probabilities.

    - ``youden``: maximises sensitivity + specificity - 1 over the ROC thresholds (Youden 1950);
    - ``sensitivity``: the highest threshold whose sensitivity is >= target;
    - ``specificity``: the lowest threshold whose specificity is >= target.

    Candidates are the observed scores (and 1.0), as in ``roc_curve``, so the value reaches the
    target on the data it was chosen on. For specificity the set of good thresholds is open
    below (just above a negative's score); the lowest candidate makes the same calls on this
    data as any real number in that gap and errs towards negative calls on new images. Rows
    with NaN truth are dropped.
    """
    t, s = _known(truth, scores)
    if not (t == 1).any() or not (t == 0).any():
        raise ValueError("choose_threshold needs both positive and negative cases")
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("scores must be probabilities in [0, 1]")
    if method == "youden":
        value = _youden(t, s)
    elif method == "sensitivity":
        value = _for_sensitivity(t, s, _check_target(target))
    elif method == "specificity":
        value = _for_specificity(t, s, _check_target(target))
    else:
        raise ValueError(f"unknown method {method!r}")
    return float(min(max(value, 0.0), 1.0))  # roc_curve's first threshold is inf


# --- ensemble member weights ---------------------------------------------------------------


def _auc_columns(truth: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(column, known-row mask, 0/1 truth) for each label with both classes present."""
    cols = []
    for j in range(truth.shape[1]):
        known = ~np.isnan(truth[:, j])
        tj = truth[known, j].astype(np.int64)
        if 0 < tj.sum() < tj.size:
            cols.append((j, known, tj))
    return cols


def _mean_auc(
    weights: np.ndarray, stack: np.ndarray, cols: list[tuple[int, np.ndarray, np.ndarray]]
) -> float:
    combined = np.tensordot(weights, stack, axes=1)  # (N, L)
    return float(np.mean([rank_auc(tj, combined[known, j]) for j, known, tj in cols]))


def _simplex_grid(members: int, steps: int) -> np.ndarray:
    """All weight vectors with entries k/steps summing to 1 (for 2-3 members)."""
    if members == 2:
        a = np.arange(steps + 1) / steps
        return np.stack([a, 1.0 - a], axis=1)
    rows = [
        (i / steps, j / steps, (steps - i - j) / steps)
        for i in range(steps + 1)
        for j in range(steps + 1 - i)
    ]
    return np.array(rows)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def fit_member_weights(
    member_scores: Sequence[np.ndarray], truth: np.ndarray, seed: int = 0
) -> tuple[list[float], float]:
    """Non-negative weights summing to 1 that maximise the mean per-label AUC of the average.

    member_scores are each member's (N, L) probabilities on the same images; NaN truth is
    ignored per label. Two or three members: exhaustive simplex grid in steps of 0.02 (2) or
    0.05 (3); more: Nelder-Mead over softmax parameters from equal weights and four seeded
    random starts. Equal weights are always a candidate and win ties, so the result is never
    worse than equal weights. Deterministic for a given seed. Returns (weights, mean AUC).
    """
    if not member_scores:
        raise ValueError("no ensemble members")
    stack = np.stack([np.asarray(m, dtype=float) for m in member_scores])  # (M, N, L)
    t = np.asarray(truth, dtype=float)
    if stack.shape[1:] != t.shape or t.ndim != 2:
        raise ValueError(f"member scores {stack.shape[1:]} do not match truth {t.shape}")
    cols = _auc_columns(t)
    if not cols:
        raise ValueError("no label has both positive and negative cases")
    m = stack.shape[0]
    best_w = np.full(m, 1.0 / m)
    best = _mean_auc(best_w, stack, cols)
    if m == 1:
        return [1.0], best
    if m <= 3:
        candidates = list(_simplex_grid(m, 50 if m == 2 else 20))
    else:
        candidates = _nelder_mead_candidates(stack, cols, seed)
    for w in candidates:
        score = _mean_auc(w, stack, cols)
        if score > best + 1e-12:
            best, best_w = score, w
    return [float(x) for x in best_w], best


def _nelder_mead_candidates(
    stack: np.ndarray, cols: list[tuple[int, np.ndarray, np.ndarray]], seed: int
) -> list[np.ndarray]:
    """Local optima of Nelder-Mead (Nelder & Mead 1965) over softmax weight parameters."""
    m = stack.shape[0]
    rng = np.random.default_rng(seed)
    starts = [np.zeros(m), *np.asarray(rng.normal(0.0, 1.0, size=(4, m)))]
    found: list[np.ndarray] = []
    for z0 in starts:
        simplex = np.vstack([z0, z0 + np.eye(m)])  # unit steps: AUC is piecewise constant
        res = optimize.minimize(
            lambda z: -_mean_auc(_softmax(z), stack, cols),
            z0,
            method="Nelder-Mead",
            options={"maxiter": 100 * m, "xatol": 1e-3, "fatol": 1e-7, "initial_simplex": simplex},
        )
        found.append(_softmax(np.asarray(res.x)))
    return found


__all__ = [
    "Evaluation",
    "FindingMetrics",
    "bootstrap_auc",
    "choose_threshold",
    "evaluate_scores",
    "finding_metrics",
    "fit_member_weights",
    "rank_auc",
]
