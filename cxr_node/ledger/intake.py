"""Intake and assembly: instances arrive, studies are queued or refused, lost jobs found."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import (
    PATIENT_CONFLICT,
    PatientConflict,
    StudyAttributes,
    StudyRow,
    study_row,
)
from cxr_node.ledger.schema import (
    instances,
    patient_conflicts,
    studies,
    study_attributes,
    workers,
)
from cxr_node.ledger.transitions import StudyState, move_study, note

S = StudyState
_REOPENED_BY_AN_IMAGE = (S.DELIVERED, S.NOT_ELIGIBLE, S.FAILED, S.ANALYSED)
_PATIENT_IDENTITY = ("patient_id", "patient_name", "patient_birth_date")
"""What says whose image it is. A value missing on either side is unknown, not different."""
_PATIENT_CONFLICT_DETAIL = f"{PATIENT_CONFLICT}: instance refused"


class IntakeLedger(LedgerBase):
    """Instances in, studies assembled, lost jobs found again."""

    def record_instance(
        self,
        *,
        study_key: str,
        study_uid: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        path: str,
        size: int,
        eligible: bool,
        reason_code: str | None,
        reason: str | None,
        calling_ae: str,
        destinations: list[str],
        sha256: str | None = None,
        attributes: StudyAttributes | None = None,
        shadow: bool = False,
    ) -> bool | PatientConflict:
        """Record a spooled instance; return False when the instance was already known with the
        same content. Known with other content (a corrected image), it replaces the old row and
        the study is assembled again. ``attributes`` are kept from the study's first instance
        (and filled in where it lacked them). ``shadow`` (shadow mode) marks a new study; like
        ``destinations``, it is set once, by the study's first instance.

        Refused, in the same transaction, when the study, or the SOP Instance UID in any study,
        is known for another patient (:meth:`patient_conflict`): nothing is replaced or merged,
        the known study gets a ``PATIENT_CONFLICT`` event row and a ``patient_conflicts`` row
        (``calling_ae``, which UID, this SOP Instance UID; no patient data), and a
        :class:`PatientConflict` comes back."""

        def attempt() -> bool | PatientConflict:
            now = self.now()
            with self._begin() as db:
                conflict = self._patient_conflict(db, study_key, sop_instance_uid, attributes)
                if conflict is not None:
                    self._note_patient_conflict(
                        db,
                        now,
                        conflict.study_key,
                        known_as=conflict.known_as,
                        calling_ae=calling_ae,
                        sop_instance_uid=sop_instance_uid,
                    )
                    return conflict
                known = self._instance_digest(db, study_key, sop_instance_uid)
                if known is not None and (sha256 is None or known == sha256):
                    return False
                if known is not None:
                    db.execute(
                        instances.delete().where(
                            instances.c.study_key == study_key,
                            instances.c.sop_instance_uid == sop_instance_uid,
                        )
                    )
                db.execute(
                    instances.insert().values(
                        study_key=study_key,
                        sop_instance_uid=sop_instance_uid,
                        sop_class_uid=sop_class_uid,
                        path=path,
                        size=size,
                        eligible=eligible,
                        reason_code=reason_code,
                        reason=reason,
                        received_at=now,
                        sha256=sha256,
                    )
                )
                detail = f"instance {reason_code or 'ok'}"
                state = db.execute(
                    sa.select(studies.c.state).where(studies.c.study_key == study_key)
                ).scalar()
                if state is None:
                    db.execute(
                        studies.insert().values(
                            study_key=study_key,
                            study_uid=study_uid,
                            state=S.RECEIVED,
                            calling_ae=calling_ae,
                            destinations=json.dumps(list(destinations)),
                            created_at=now,
                            updated_at=now,
                            last_received_at=now,
                            attempts=0,
                            shadow=shadow,
                        )
                    )
                    note(db, now, study_key, S.RECEIVED, detail)
                elif not move_study(
                    db,
                    now,
                    study_key,
                    S.RECEIVED,
                    when=(S.RECEIVED, *_REOPENED_BY_AN_IMAGE),
                    values={
                        "last_received_at": now,
                        "reason_code": None,
                        "reason": None,
                        "notice_state": None,
                    },
                    detail=detail,
                ):
                    # queued or being analysed: the analysis reads the ledger's images when it
                    # claims the study, and one that ends before this image reassembles it
                    db.execute(
                        studies.update()
                        .where(studies.c.study_key == study_key)
                        .values(last_received_at=now, updated_at=now)
                    )
                    note(db, now, study_key, S(state), detail)
                if attributes is not None:
                    self._keep_attributes(db, study_key, attributes, now)
            return True

        try:
            return attempt()
        except sa.exc.IntegrityError:
            # Another association stored the same instance (or study) between our check and our
            # insert; the second attempt sees its row.
            return attempt()

    def patient_conflict(
        self,
        study_key: str,
        sop_instance_uid: str,
        attributes: StudyAttributes | None,
        *,
        calling_ae: str | None = None,
    ) -> PatientConflict | None:
        """Whether an instance would be refused for another patient (see
        :meth:`record_instance`, which checks again atomically). A conflict is recorded here
        too, with ``calling_ae`` (the sender's AE title) when given."""
        with self._begin() as db:
            conflict = self._patient_conflict(db, study_key, sop_instance_uid, attributes)
            if conflict is not None:
                self._note_patient_conflict(
                    db,
                    self.now(),
                    conflict.study_key,
                    known_as=conflict.known_as,
                    calling_ae=calling_ae,
                    sop_instance_uid=sop_instance_uid,
                )
            return conflict

    def record_patient_conflict(
        self,
        study_key: str,
        *,
        known_as: str | None = None,
        calling_ae: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> bool:
        """Record on a known study that an instance was refused for another patient: an event
        row (detail ``PATIENT_CONFLICT: instance refused``) and a ``patient_conflicts`` row, no
        patient data. False if the study is unknown."""
        with self._begin() as db:
            return self._note_patient_conflict(
                db,
                self.now(),
                study_key,
                known_as=known_as,
                calling_ae=calling_ae,
                sop_instance_uid=sop_instance_uid,
            )

    @staticmethod
    def _note_patient_conflict(
        db: Connection,
        now: float,
        study_key: str,
        *,
        known_as: str | None = None,
        calling_ae: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> bool:
        """The event row and the ``patient_conflicts`` row of one refusal (UIDs and the AE
        title only: the refused instance's patient values are never passed here)."""
        state = db.execute(
            sa.select(studies.c.state).where(studies.c.study_key == study_key)
        ).scalar()
        if state is None:
            return False
        note(db, now, study_key, S(state), _PATIENT_CONFLICT_DETAIL)
        db.execute(
            patient_conflicts.insert().values(
                study_key=study_key,
                at=now,
                known_as=known_as,
                reason_code=PATIENT_CONFLICT,
                calling_ae=calling_ae or None,
                sop_instance_uid=sop_instance_uid or None,
            )
        )
        return True

    @staticmethod
    def _patient_conflict(
        db: Connection,
        study_key: str,
        sop_instance_uid: str,
        attributes: StudyAttributes | None,
    ) -> PatientConflict | None:
        if attributes is None:
            return None
        incoming = {key: getattr(attributes, key) for key in _PATIENT_IDENTITY}
        if all(value in (None, "") for value in incoming.values()):
            return None
        columns = [study_attributes.c[key] for key in _PATIENT_IDENTITY]
        known = db.execute(
            sa.select(*columns).where(study_attributes.c.study_key == study_key)
        ).first()
        if known is not None and _other_patient(incoming, known._mapping):
            return PatientConflict(study_key=study_key, known_as="Study Instance")
        elsewhere = db.execute(
            sa.select(study_attributes.c.study_key, *columns)
            .select_from(
                instances.join(
                    study_attributes, study_attributes.c.study_key == instances.c.study_key
                )
            )
            .where(
                instances.c.sop_instance_uid == sop_instance_uid,
                instances.c.study_key != study_key,
            )
        ).all()
        for row in elsewhere:
            if _other_patient(incoming, row._mapping):
                return PatientConflict(study_key=row.study_key, known_as="SOP Instance")
        return None

    @staticmethod
    def _keep_attributes(
        db: Connection, study_key: str, attributes: StudyAttributes, now: float
    ) -> None:
        values = {k: v for k, v in asdict(attributes).items() if v not in (None, "")}
        known = db.execute(
            sa.select(study_attributes).where(study_attributes.c.study_key == study_key)
        ).first()
        if known is None:
            db.execute(
                study_attributes.insert().values(study_key=study_key, updated_at=now, **values)
            )
            return
        missing = {k: v for k, v in values.items() if getattr(known, k) in (None, "")}
        if missing:
            db.execute(
                study_attributes.update()
                .where(study_attributes.c.study_key == study_key)
                .values(updated_at=now, **missing)
            )

    @staticmethod
    def _instance_digest(db: Connection, study_key: str, sop_instance_uid: str) -> str | None:
        """The known instance's content digest ("" when unknown content), or None if new."""
        row = db.execute(
            sa.select(instances.c.sha256).where(
                instances.c.study_key == study_key,
                instances.c.sop_instance_uid == sop_instance_uid,
            )
        ).first()
        return None if row is None else (row.sha256 or "")

    def instance_digest(self, study_key: str, sop_instance_uid: str) -> str | None:
        """The stored content digest of an instance ("" if not recorded), or None when new."""
        with self._begin() as db:
            return self._instance_digest(db, study_key, sop_instance_uid)

    def reprocess(self, study_key: str) -> StudyState | None:
        """Analyse a study again (``cxr-node reprocess``): back to RECEIVED, assembled at once.

        Returns the state it left, or None when it is unknown, being analysed right now, or its
        images were purged (see ``spool_retention_hours``).
        """
        with self._begin() as db:
            return move_study(
                db,
                self.now(),
                study_key,
                S.RECEIVED,
                when=(S.RECEIVED, *_REOPENED_BY_AN_IMAGE),
                where=[studies.c.purged_at.is_(None)],
                values={
                    "reason_code": None,
                    "reason": None,
                    "notice_state": None,
                    "attempts": 0,
                    "lease_until": None,
                    "last_received_at": 0.0,
                },
                detail="reprocess requested",
            )

    # --- assembly -----------------------------------------------------------------------------

    def is_receiving(self, study_key: str) -> bool:
        """Whether the study is in RECEIVED (waiting to be assembled)."""
        with self._begin() as db:
            state = db.execute(
                sa.select(studies.c.state).where(studies.c.study_key == study_key)
            ).scalar()
        return state == S.RECEIVED

    def studies_quiet_since(self, quiet_seconds: float) -> list[str]:
        """Studies in RECEIVED whose last instance arrived at least ``quiet_seconds`` ago."""
        cutoff = self.now() - quiet_seconds
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies.c.study_key).where(
                    studies.c.state == S.RECEIVED, studies.c.last_received_at <= cutoff
                )
            )
            return [row.study_key for row in rows]

    def mark_queued(self, study_key: str, expect: StudyState | None = None) -> bool:
        """The study's job is about to be handed to the queue: from RECEIVED, or (re-sent) from
        QUEUED or ANALYSING; with ``expect``, only from that state."""
        when = (expect,) if expect is not None else (S.RECEIVED, S.QUEUED, S.ANALYSING)
        with self._begin() as db:
            moved = move_study(
                db,
                self.now(),
                study_key,
                S.QUEUED,
                when=when,
                values={"lease_until": None, "reserved_by": None, "claimed_by": None},
                detail=None if expect in (None, S.RECEIVED) else "job re-sent",
            )
        return moved is not None

    def mark_not_eligible(self, study_key: str, reason_code: str, reason: str) -> None:
        """No image of the study can be analysed; say why."""
        with self._begin() as db:
            move_study(
                db,
                self.now(),
                study_key,
                S.NOT_ELIGIBLE,
                when=(S.RECEIVED,),
                values={"reason_code": reason_code, "reason": reason},
                detail=reason_code,
            )

    def stale_studies(self, *, queued_older_than: float, all_analysing: bool) -> list[StudyRow]:
        """Studies whose job may have been lost: QUEUED this long, expired (or all) ANALYSING
        claims."""
        now = self.now()
        lease_expired = sa.or_(studies.c.lease_until.is_(None), studies.c.lease_until < now)
        analysing = studies.c.state == S.ANALYSING
        queued_at = sa.func.coalesce(studies.c.queued_at, studies.c.updated_at)
        condition = sa.or_(
            sa.and_(studies.c.state == S.QUEUED, queued_at <= now - queued_older_than),
            analysing if all_analysing else sa.and_(analysing, lease_expired),
        )
        with self._begin() as db:
            rows = db.execute(sa.select(studies).where(condition)).all()
        return [study_row(row) for row in rows]

    def overdue_studies(
        self, *, queue_empty: bool, grace_seconds: float, worker_silent_seconds: float
    ) -> list[StudyRow]:
        """Studies whose job message is gone, as far as the ledger can tell:

        - ANALYSING with an expired claim (its worker stopped renewing it);
        - QUEUED and taken from the queue by a worker that has gone silent;
        - QUEUED, taken by no worker, queued over ``grace_seconds`` ago, while the analysis
          queue is empty (``queue_empty``): its message was lost (a broker restarted without
          persistence, or was down when the job was sent).
        """
        now = self.now()
        live = sa.select(workers.c.worker_id).where(
            workers.c.heartbeat_at >= now - worker_silent_seconds
        )
        queued_at = sa.func.coalesce(studies.c.queued_at, studies.c.updated_at)
        queued = studies.c.state == S.QUEUED
        conditions: list[Any] = [
            sa.and_(
                studies.c.state == S.ANALYSING,
                sa.or_(studies.c.lease_until.is_(None), studies.c.lease_until < now),
            ),
            sa.and_(queued, studies.c.reserved_by.is_not(None), studies.c.reserved_by.not_in(live)),
        ]
        if queue_empty:
            conditions.append(
                sa.and_(queued, studies.c.reserved_by.is_(None), queued_at <= now - grace_seconds)
            )
        with self._begin() as db:
            rows = db.execute(sa.select(studies).where(sa.or_(*conditions))).all()
        return [study_row(row) for row in rows]

    def note_reserved(self, study_key: str, worker_id: str) -> None:
        """A worker took the study's job from the queue (it has not started it yet)."""
        with self._begin() as db:
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key, studies.c.state == S.QUEUED)
                .values(reserved_by=worker_id)
            )

    def queued_count(self) -> int:
        """How many studies wait in QUEUED."""
        with self._begin() as db:
            return int(
                db.execute(
                    sa.select(sa.func.count())
                    .select_from(studies)
                    .where(studies.c.state == S.QUEUED)
                ).scalar_one()
            )


def _other_patient(incoming: dict[str, str | None], known: Any) -> bool:
    """Whether two patient identities differ in a value both know (missing: unknown)."""
    for key in _PATIENT_IDENTITY:
        ours, theirs = incoming.get(key), known[key]
        if ours in (None, "") or theirs in (None, ""):
            continue
        if str(ours).strip() != str(theirs).strip():
            return True
    return False
