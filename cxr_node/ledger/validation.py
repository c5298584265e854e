"""Local validation and drift: what the model said about the studies analysed here, per study and
label, for comparing with reports (validation) and for watching the positive rates and
probabilities move week by week (drift).

A study's finding is the image with the highest probability for that label (its threshold and
whether it was present come with it), as the study's score and priority are the highest of its
images'. The accession number is there to match reports: patient data, for authorised exports
only, never in logs or metrics (the metrics use :meth:`ValidationLedger.finding_figures`, which
carries finding labels and numbers only).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.metrics import Histogram
from cxr_node.ledger.schema import findings, studies, study_attributes

WEEK_SECONDS = 7 * 86400.0
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""Upper bounds of the abnormality score histogram (the score is between 0 and 1)."""


@dataclass(frozen=True)
class AnalysedStudyFindings:
    """An analysed study and, per label, its image with the highest probability:
    ``findings[label] = (probability, threshold, present)``."""

    study_key: str
    study_uid: str
    accession_number: str | None
    analysed_at: float
    model_name: str | None
    model_version: str | None
    model_demo: bool | None
    shadow: bool
    abnormality_score: float | None
    priority: str | None
    findings: dict[str, tuple[float, float, bool]]

    def __repr__(self) -> str:
        return f"AnalysedStudyFindings({self.study_key!r}, <{len(self.findings)} findings>)"


@dataclass(frozen=True)
class DriftRow:
    """One finding in one ISO week (``2026-W49``, UTC) over the studies analysed in it: how many,
    how many positive, their mean probability and its 10th, 50th and 90th percentiles (each
    study counted once, with its highest probability for the label)."""

    week: str
    label: str
    studies: int
    positives: int
    positive_rate: float
    mean_probability: float
    score_quantiles: tuple[float, float, float]


@dataclass(frozen=True)
class FindingRate:
    """One finding over a window: analysed studies, those positive, their mean probability."""

    studies: int
    positives: int
    mean_probability: float

    @property
    def positive_rate(self) -> float:
        """The fraction of the studies positive for the finding."""
        return self.positives / self.studies if self.studies else 0.0


@dataclass(frozen=True)
class FindingFigures:
    """What ``/metrics`` reports about the studies analysed in a recent window: per finding
    label its rate, and the studies' abnormality scores. No patient data, no UIDs."""

    window_seconds: float
    by_finding: dict[str, FindingRate]
    abnormality_score: Histogram


def iso_week(epoch: float) -> str:
    """The ISO 8601 week of a time, in UTC: ``2026-W49``."""
    year, week, _ = datetime.fromtimestamp(epoch, UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(epoch: float) -> float:
    """Monday 00:00 UTC of the ISO week of a time."""
    day = datetime.fromtimestamp(epoch, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day - timedelta(days=day.weekday())).timestamp()


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of sorted values, linear between the two nearest ranks (the
    "inclusive" method: numpy's default, ``statistics.quantiles(method="inclusive")``)."""
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def drift_rows(analysed: Iterable[AnalysedStudyFindings]) -> list[DriftRow]:
    """Per ISO week and finding, the studies' figures (see :class:`DriftRow`), in week and label
    order."""
    probabilities: dict[tuple[str, str], list[float]] = defaultdict(list)
    positives: dict[tuple[str, str], int] = defaultdict(int)
    for study in analysed:
        week = iso_week(study.analysed_at)
        for label, (probability, _threshold, present) in study.findings.items():
            probabilities[week, label].append(probability)
            positives[week, label] += int(present)
    rows = []
    for (week, label), values in sorted(probabilities.items()):
        ordered = sorted(values)
        rows.append(
            DriftRow(
                week=week,
                label=label,
                studies=len(values),
                positives=positives[week, label],
                positive_rate=positives[week, label] / len(values),
                mean_probability=math.fsum(values) / len(values),
                score_quantiles=(
                    quantile(ordered, 0.1),
                    quantile(ordered, 0.5),
                    quantile(ordered, 0.9),
                ),
            )
        )
    return rows


def finding_figures(
    analysed: Iterable[AnalysedStudyFindings], window_seconds: float
) -> FindingFigures:
    """Per finding the positive rate and mean probability of the studies, and a histogram of
    their abnormality scores (:data:`SCORE_BUCKETS`)."""
    probabilities: dict[str, list[float]] = defaultdict(list)
    positives: dict[str, int] = defaultdict(int)
    scores: list[float] = []
    for study in analysed:
        if study.abnormality_score is not None:
            scores.append(study.abnormality_score)
        for label, (probability, _threshold, present) in study.findings.items():
            probabilities[label].append(probability)
            positives[label] += int(present)
    by_finding = {
        label: FindingRate(len(values), positives[label], math.fsum(values) / len(values))
        for label, values in sorted(probabilities.items())
    }
    buckets = [(bound, sum(1 for s in scores if s <= bound)) for bound in SCORE_BUCKETS]
    histogram = Histogram(
        buckets=[*buckets, (math.inf, len(scores))], total=math.fsum(scores), count=len(scores)
    )
    return FindingFigures(window_seconds, by_finding, histogram)


def _strongest_image_per_label(since: float | None) -> sa.Subquery:
    """Per analysed study and label, the findings row of the image with the highest
    probability (``rank`` 1; ties: the lowest SOP Instance UID)."""
    rank = (
        sa.func.row_number()
        .over(
            partition_by=(findings.c.study_key, findings.c.label),
            order_by=(findings.c.probability.desc(), findings.c.sop_instance_uid),
        )
        .label("rank")
    )
    query = (
        sa.select(
            findings.c.study_key,
            findings.c.label,
            findings.c.probability,
            findings.c.threshold,
            findings.c.present,
            rank,
        )
        .select_from(findings.join(studies, studies.c.study_key == findings.c.study_key))
        .where(studies.c.analysed_at.is_not(None))
    )
    if since is not None:
        query = query.where(studies.c.analysed_at >= since)
    return query.subquery("strongest")


class ValidationLedger(LedgerBase):
    """What the model said about the studies analysed here: for local validation and drift."""

    def analysed_findings(self, since: float | None = None) -> list[AnalysedStudyFindings]:
        """Every analysed study with findings (analysed at or after ``since``), oldest analysis
        first, each label with its image of highest probability. One query."""
        strongest = _strongest_image_per_label(since)
        query = (
            sa.select(
                studies.c.study_key,
                studies.c.study_uid,
                study_attributes.c.accession_number,
                studies.c.analysed_at,
                studies.c.model_name,
                studies.c.model_version,
                studies.c.model_demo,
                studies.c.shadow,
                studies.c.abnormality_score,
                studies.c.priority,
                strongest.c.label,
                strongest.c.probability,
                strongest.c.threshold,
                strongest.c.present,
            )
            .select_from(
                strongest.join(studies, studies.c.study_key == strongest.c.study_key).outerjoin(
                    study_attributes, study_attributes.c.study_key == studies.c.study_key
                )
            )
            .where(strongest.c.rank == 1)
            .order_by(studies.c.analysed_at, studies.c.study_key, strongest.c.label)
        )
        with self._begin() as db:
            rows = db.execute(query).all()
        return _grouped(rows)

    def weekly_drift(self, weeks: int = 12, now: float | None = None) -> list[DriftRow]:
        """Per ISO week (UTC) and finding, over this week and the ``weeks - 1`` before it: the
        studies analysed, those positive, the mean probability and its p10, p50 and p90."""
        if weeks < 1:
            raise ValueError("weeks must be at least 1")
        end = self.now() if now is None else now
        start = week_start(end) - (weeks - 1) * WEEK_SECONDS
        analysed = [s for s in self.analysed_findings(since=start) if s.analysed_at <= end]
        return drift_rows(analysed)

    def finding_figures(self, window_seconds: float = WEEK_SECONDS) -> FindingFigures:
        """Per finding, the studies analysed in the last ``window_seconds`` (default 7 days)
        and the share positive, their mean probability, and their abnormality scores (for
        ``/metrics``: finding labels and numbers only)."""
        since = self.now() - window_seconds
        return finding_figures(self.analysed_findings(since=since), window_seconds)


def _grouped(rows: Sequence[Any]) -> list[AnalysedStudyFindings]:
    """One :class:`AnalysedStudyFindings` per study from rows ordered by study, one per label."""
    grouped: list[AnalysedStudyFindings] = []
    for row in rows:
        if not grouped or grouped[-1].study_key != row.study_key:
            grouped.append(
                AnalysedStudyFindings(
                    study_key=row.study_key,
                    study_uid=row.study_uid,
                    accession_number=row.accession_number,
                    analysed_at=row.analysed_at,
                    model_name=row.model_name,
                    model_version=row.model_version,
                    model_demo=None if row.model_demo is None else bool(row.model_demo),
                    shadow=bool(row.shadow),
                    abnormality_score=row.abnormality_score,
                    priority=row.priority,
                    findings={},
                )
            )
        grouped[-1].findings[row.label] = (
            float(row.probability),
            float(row.threshold),
            bool(row.present),
        )
    return grouped
