"""Figures for ``/metrics``, counted in the ledger, so that they cover every process (serve, each
worker, another machine) and survive restarts. Only states, reason codes, destination names and
durations: no patient data, no UIDs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.schema import deliveries, destination_leases, studies
from cxr_node.ledger.transitions import FINAL_STUDY_STATES, StudyState

LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
ANALYSIS_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (the last is +Inf), their sum and count."""

    buckets: list[tuple[float, int]]
    total: float
    count: int


@dataclass(frozen=True)
class LedgerFigures:
    """What ``/metrics`` reports from the ledger."""

    studies_by_state: dict[str, int]
    finished_by_reason: dict[tuple[str, str], int]
    deliveries: dict[tuple[str, str], int]
    destinations_down: int
    to_analysed: Histogram
    to_delivered: Histogram
    analysis: Histogram


def _histogram(
    db: Connection, start: sa.ColumnElement[float], end: sa.ColumnElement[float],
    bounds: Sequence[float],
) -> Histogram:  # fmt: skip
    span = end - start
    done = sa.and_(start.is_not(None), end.is_not(None), span >= 0)
    columns = [sa.func.sum(sa.case((sa.and_(done, span <= b), 1), else_=0)) for b in bounds]
    columns += [sa.func.sum(sa.case((done, span), else_=0.0))]
    columns += [sa.func.sum(sa.case((done, 1), else_=0))]
    row = db.execute(sa.select(*columns).select_from(studies)).one()
    counts = [int(value or 0) for value in row[: len(bounds)]]
    count = int(row[-1] or 0)
    return Histogram(
        buckets=[*zip(bounds, counts, strict=True), (float("inf"), count)],
        total=float(row[-2] or 0.0),
        count=count,
    )


class MetricsLedger(LedgerBase):
    """Counts and durations for monitoring."""

    def figures(self) -> LedgerFigures:
        """Everything ``/metrics`` reports from the ledger, in one transaction."""
        final = [state.value for state in FINAL_STUDY_STATES]
        with self._begin() as db:
            by_state = {
                state: int(count)
                for state, count in db.execute(
                    sa.select(studies.c.state, sa.func.count()).group_by(studies.c.state)
                )
            }
            by_reason = {
                (state, reason or ""): int(count)
                for state, reason, count in db.execute(
                    sa.select(studies.c.state, studies.c.reason_code, sa.func.count())
                    .where(studies.c.state.in_(final))
                    .group_by(studies.c.state, studies.c.reason_code)
                )
            }
            per_destination = {
                (destination, state): int(count)
                for destination, state, count in db.execute(
                    sa.select(
                        deliveries.c.destination, deliveries.c.state, sa.func.count()
                    ).group_by(deliveries.c.destination, deliveries.c.state)
                )
            }
            down = int(
                db.execute(
                    sa.select(sa.func.count())
                    .select_from(destination_leases)
                    .where(destination_leases.c.down_since.is_not(None))
                ).scalar_one()
            )
            to_analysed = _histogram(
                db, studies.c.created_at, studies.c.analysed_at, LATENCY_BUCKETS
            )
            to_delivered = _histogram(
                db, studies.c.created_at, studies.c.delivered_at, LATENCY_BUCKETS
            )
            analysis = _histogram(db, studies.c.claimed_at, studies.c.analysed_at, ANALYSIS_BUCKETS)
        for state in StudyState:
            by_state.setdefault(state.value, 0)
        return LedgerFigures(
            by_state, by_reason, per_destination, down, to_analysed, to_delivered, analysis
        )
