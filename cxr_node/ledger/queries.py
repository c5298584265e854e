"""The read model: what the CLI (and later the API and pages) ask of the ledger."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import fields

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import (
    DeliveryRow,
    FindingRow,
    InstanceRow,
    PatientConflictRow,
    ResultRow,
    StudyAttributes,
    StudyRow,
    delivery_row,
    study_row,
)
from cxr_node.ledger.schema import (
    deliveries,
    events,
    findings,
    instances,
    patient_conflicts,
    results,
    studies,
    study_attributes,
)


class QueriesLedger(LedgerBase):
    """Read-only questions about studies."""

    def study(self, study_key: str) -> StudyRow | None:
        """One study, or None."""
        with self._begin() as db:
            row = db.execute(sa.select(studies).where(studies.c.study_key == study_key)).first()
        return study_row(row) if row is not None else None

    def list_studies(self, limit: int = 50) -> list[StudyRow]:
        """The most recently updated studies first."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies).order_by(studies.c.updated_at.desc()).limit(limit)
            ).all()
        return [study_row(row) for row in rows]

    def instances_of(self, study_key: str) -> list[InstanceRow]:
        """The instances of one study, in arrival order."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(instances)
                .where(instances.c.study_key == study_key)
                .order_by(instances.c.received_at)
            ).all()
        return [
            InstanceRow(
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                path=row.path,
                eligible=row.eligible,
                reason_code=row.reason_code,
                reason=row.reason,
            )
            for row in rows
        ]

    def eligible_paths(self, study_key: str) -> list[str]:
        """Spool-relative paths of the study's images that may be analysed, as of now (images
        received before the study was purged are gone)."""
        with self._begin() as db:
            purged_at = db.execute(
                sa.select(studies.c.purged_at).where(studies.c.study_key == study_key)
            ).scalar()
            rows = db.execute(
                sa.select(instances.c.path)
                .where(
                    instances.c.study_key == study_key,
                    instances.c.eligible.is_(True),
                    instances.c.received_at > (purged_at or 0.0),
                )
                .order_by(instances.c.received_at)
            ).all()
        return [row.path for row in rows]

    def results_of(self, study_key: str) -> list[ResultRow]:
        """The result objects written for one study."""
        with self._begin() as db:
            rows = db.execute(sa.select(results).where(results.c.study_key == study_key)).all()
        return [
            ResultRow(
                sop_instance_uid=row.sop_instance_uid,
                source_sop_instance_uid=row.source_sop_instance_uid,
                kind=row.kind,
                path=row.path,
            )
            for row in rows
        ]

    def findings_of(self, study_key: str) -> list[FindingRow]:
        """What the model said, per image and label (label order as stored)."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(findings)
                .where(findings.c.study_key == study_key)
                .order_by(findings.c.sop_instance_uid, findings.c.probability.desc())
            ).all()
        return [
            FindingRow(
                sop_instance_uid=row.sop_instance_uid,
                label=row.label,
                code={
                    "value": row.code_value,
                    "scheme": row.code_scheme,
                    "meaning": row.code_meaning,
                },
                probability=row.probability,
                threshold=row.threshold,
                present=bool(row.present),
                region=json.loads(row.region_json) if row.region_json else None,
            )
            for row in rows
        ]

    def attributes_of(self, study_key: str) -> StudyAttributes | None:
        """The study's patient and study attributes (patient data: for authorised eyes only)."""
        with self._begin() as db:
            row = db.execute(
                sa.select(study_attributes).where(study_attributes.c.study_key == study_key)
            ).first()
        if row is None:
            return None
        return StudyAttributes(**{f.name: getattr(row, f.name) for f in fields(StudyAttributes)})

    def events_of(self, study_key: str) -> list[tuple[float, str, str | None]]:
        """A study's history: (time, state, detail), oldest first."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(events).where(events.c.study_key == study_key).order_by(events.c.id)
            ).all()
        return [(row.at, row.state, row.detail) for row in rows]

    def deliveries_of(self, study_key: str) -> dict[str, DeliveryRow]:
        """Destination name -> its delivery, for one study."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries).where(deliveries.c.study_key == study_key)
            ).all()
        return {row.destination: delivery_row(row) for row in rows}

    def patient_conflicts(
        self,
        *,
        since: float | None = None,
        study_key: str | None = None,
        limit: int | None = None,
    ) -> list[PatientConflictRow]:
        """Instances refused for another patient, newest first: all, those at or after
        ``since``, or those on one known study; at most ``limit``. No patient data."""
        conflicts = patient_conflicts
        query = sa.select(conflicts, studies.c.study_uid).select_from(
            conflicts.outerjoin(studies, studies.c.study_key == conflicts.c.study_key)
        )
        if since is not None:
            query = query.where(conflicts.c.at >= since)
        if study_key is not None:
            query = query.where(conflicts.c.study_key == study_key)
        query = query.order_by(conflicts.c.at.desc(), conflicts.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._begin() as db:
            rows = db.execute(query).all()
        return [
            PatientConflictRow(
                at=row.at,
                study_key=row.study_key,
                study_uid=row.study_uid,
                known_as=row.known_as,
                reason_code=row.reason_code,
                calling_ae=row.calling_ae,
                sop_instance_uid=row.sop_instance_uid,
            )
            for row in rows
        ]

    def patient_conflict_counts(self, study_keys: Collection[str]) -> dict[str, int]:
        """Known study -> how many instances were refused on it for another patient (studies
        without any are left out)."""
        keys = list(study_keys)
        if not keys:
            return {}
        with self._begin() as db:
            rows = db.execute(
                sa.select(patient_conflicts.c.study_key, sa.func.count())
                .where(patient_conflicts.c.study_key.in_(keys))
                .group_by(patient_conflicts.c.study_key)
            ).all()
        return {row[0]: int(row[1]) for row in rows}
