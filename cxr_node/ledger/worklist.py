"""The worklist: studies in reading order, filtered and paged (the read model of the pages and
``GET /api/v1/studies``).

Order (issue 13): critical, then abnormal, then everything else (routine, not yet analysed, not
analysed); within a band by abnormality score, highest first, then by waiting time, longest
first. Ageing: a study received longer than ``ageing_seconds`` ago climbs one band and says so
(``aged``), so nothing waits forever; the AI can raise a study's place, never lower it below
where its waiting time puts it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import StudyAttributes, StudyRow, study_row
from cxr_node.ledger.schema import findings, studies, study_attributes

BANDS = ("critical", "abnormal", "routine")
"""Worklist bands, most urgent first; a study without a priority is in the last."""


@dataclass(frozen=True)
class WorklistFilter:
    """What to show: any of ``states`` / ``priorities`` (empty: all), received at or after
    ``since``, from ``calling_ae``, and ``text`` found in the accession number, patient name or
    patient ID (patient data: authorised users only)."""

    states: Collection[str] = ()
    priorities: Collection[str] = ()
    since: float | None = None
    calling_ae: str | None = None
    text: str | None = None


@dataclass(frozen=True)
class WorklistEntry:
    """A study on the worklist: its row, attributes, band (0 = critical) and whether it aged."""

    study: StudyRow
    attributes: StudyAttributes | None
    band: int
    aged: bool


@dataclass(frozen=True)
class WorklistPage:
    """One page of the worklist and how many studies match in all."""

    entries: list[WorklistEntry]
    total: int


def _attributes(row: sa.Row[Any]) -> StudyAttributes:
    return StudyAttributes(**{f.name: getattr(row, f.name) for f in fields(StudyAttributes)})


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class WorklistLedger(LedgerBase):
    """Studies in reading order."""

    def worklist(
        self,
        wanted: WorklistFilter,
        *,
        ageing_seconds: float,
        limit: int = 50,
        offset: int = 0,
        study_key: str | None = None,
    ) -> WorklistPage:
        """A page of the worklist, in reading order (``study_key``: that study alone, with its
        band)."""
        now = self.now()
        band = sa.case(
            (studies.c.priority == BANDS[0], 0),
            (studies.c.priority == BANDS[1], 1),
            else_=2,
        )
        aged = studies.c.created_at < now - ageing_seconds
        effective = sa.case((sa.and_(aged, band > 0), band - 1), else_=band)
        where: list[sa.ColumnElement[bool]] = []
        if study_key is not None:
            where.append(studies.c.study_key == study_key)
        if wanted.states:
            where.append(studies.c.state.in_(list(wanted.states)))
        if wanted.priorities:
            where.append(studies.c.priority.in_(list(wanted.priorities)))
        if wanted.since is not None:
            where.append(studies.c.created_at >= wanted.since)
        if wanted.calling_ae:
            where.append(studies.c.calling_ae == wanted.calling_ae)
        if wanted.text:
            pattern = _like(wanted.text.strip())
            where.append(
                sa.or_(
                    *(
                        column.ilike(pattern, escape="\\")
                        for column in (
                            study_attributes.c.accession_number,
                            study_attributes.c.patient_name,
                            study_attributes.c.patient_id,
                        )
                    )
                )
            )
        joined = studies.outerjoin(
            study_attributes, study_attributes.c.study_key == studies.c.study_key
        )
        query = (
            sa.select(
                studies,
                *(study_attributes.c[f.name] for f in fields(StudyAttributes)),
                study_attributes.c.study_key.label("has_attributes"),
                effective.label("band"),
                sa.and_(aged, band > 0).label("aged"),
            )
            .select_from(joined)
            .where(*where)
            .order_by(
                effective,
                studies.c.abnormality_score.is_(None),
                studies.c.abnormality_score.desc(),
                studies.c.created_at,
                studies.c.study_key,
            )
            .limit(limit)
            .offset(offset)
        )
        count = sa.select(sa.func.count()).select_from(joined).where(*where)
        with self._begin() as db:
            rows = db.execute(query).all()
            total = int(db.execute(count).scalar_one())
        entries = [
            WorklistEntry(
                study=study_row(row),
                attributes=None
                if row.has_attributes is None
                else StudyAttributes(
                    **{f.name: getattr(row, f.name) for f in fields(StudyAttributes)}
                ),
                band=int(row.band),
                aged=bool(row.aged),
            )
            for row in rows
        ]
        return WorklistPage(entries, total)

    def top_findings(self, study_keys: Collection[str], per_study: int = 3) -> dict[str, list[str]]:
        """Per study, the labels of its present findings, most probable first (at most
        ``per_study``; a label found in several images counts once)."""
        if not study_keys:
            return {}
        with self._begin() as db:
            rows = db.execute(
                sa.select(findings.c.study_key, findings.c.label, findings.c.probability)
                .where(findings.c.study_key.in_(list(study_keys)), findings.c.present.is_(True))
                .order_by(findings.c.study_key, findings.c.probability.desc())
            ).all()
        top: dict[str, list[str]] = {}
        for row in rows:
            labels = top.setdefault(row.study_key, [])
            if row.label not in labels and len(labels) < per_study:
                labels.append(row.label)
        return top
