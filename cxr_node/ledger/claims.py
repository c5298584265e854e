"""Analysis claims (short leases renewed by a heartbeat), results, failures and notices."""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cxr_node.jobs import ImageAnalysis, Priority
from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.deliveries import open_delivery
from cxr_node.ledger.rows import NoticeState, ResultRow, destination_names
from cxr_node.ledger.schema import findings, results, studies
from cxr_node.ledger.transitions import StudyState, move_study, note

S = StudyState
_PRIORITY_ORDER = [Priority.ROUTINE, Priority.ABNORMAL, Priority.CRITICAL]
_NOT_ANALYSED = (S.NOT_ELIGIBLE, S.FAILED)


class ClaimsLedger(LedgerBase):
    """Who analyses which study, and what came of it."""

    def claim(
        self,
        study_key: str,
        lease_seconds: float,
        max_attempts: int = 3,
        worker_id: str | None = None,
    ) -> int | None:
        """Atomically take a QUEUED (or claim-expired ANALYSING) study for analysis.

        Returns the claim's token (the attempt number), which later writes (and renewals) must
        present, or None when the study is not free. A study whose analysis has been tried
        ``max_attempts`` times (each one lost to a crash, say) fails with TOO_MANY_ATTEMPTS
        instead of looping.
        """
        now = self.now()
        free = sa.or_(studies.c.state == S.QUEUED, studies.c.lease_until < now)
        with self._begin() as db:
            taken = move_study(
                db,
                now,
                study_key,
                S.ANALYSING,
                when=(S.QUEUED, S.ANALYSING),
                where=[free, studies.c.attempts < max_attempts],
                values={
                    "lease_until": now + lease_seconds,
                    "claimed_at": now,
                    "claimed_by": worker_id,
                    "reserved_by": None,
                    "attempts": studies.c.attempts + 1,
                },
            )
            if taken is not None:
                token = db.execute(
                    sa.select(studies.c.attempts).where(studies.c.study_key == study_key)
                ).scalar_one()
                return int(token)
            move_study(
                db,
                now,
                study_key,
                S.FAILED,
                when=(S.QUEUED, S.ANALYSING),
                where=[free],
                values={
                    "reason_code": "TOO_MANY_ATTEMPTS",
                    "reason": f"analysis did not complete in {max_attempts} attempts",
                    "lease_until": None,
                },
                detail="TOO_MANY_ATTEMPTS",
            )
        return None

    def renew_claim(self, study_key: str, token: int, lease_seconds: float) -> bool:
        """The heartbeat of a running analysis: extend its claim; False when it was lost."""
        with self._begin() as db:
            return bool(
                db.execute(
                    studies.update()
                    .where(
                        studies.c.study_key == study_key,
                        studies.c.state == S.ANALYSING,
                        studies.c.attempts == token,
                    )
                    .values(lease_until=self.now() + lease_seconds)
                ).rowcount
            )

    def _finish_claim(
        self,
        db: Connection,
        study_key: str,
        token: int | None,
        state: StudyState,
        reason_code: str | None = None,
        reason: str | None = None,
        *,
        final: bool | None = None,
        values: dict[str, object] | None = None,
    ) -> StudyState | None:
        """End an analysis the caller owns; a study that got an image meanwhile is reassembled.

        Returns the state written, or None when the claim is no longer the caller's (its lease
        expired and another worker took the study): then nothing is written.
        """
        owner = [studies.c.attempts == token] if token is not None else []
        row = db.execute(
            sa.select(studies.c.last_received_at, studies.c.claimed_at).where(
                studies.c.study_key == study_key, *owner
            )
        ).first()
        if row is None:
            return None
        if row.claimed_at is not None and row.last_received_at > row.claimed_at:
            state, final = S.RECEIVED, False  # an image arrived during the analysis
        moved = move_study(
            db,
            self.now(),
            study_key,
            state,
            when=(S.ANALYSING,),
            where=owner,
            values={
                "reason_code": reason_code,
                "reason": reason,
                "lease_until": None,
                **(values or {}),
            },
            detail=reason_code,
            final=final,
        )
        return None if moved is None else state

    def record_results(
        self,
        study_key: str,
        produced: list[ResultRow],
        destinations: list[str],
        token: int | None = None,
        analyses: Sequence[ImageAnalysis] = (),
    ) -> bool:
        """Results are on disk: store them and what they say, open a delivery per destination,
        state ANALYSED.

        The study's abnormality score and priority are the highest of its images'; each image's
        findings are kept. Without destinations the study rests in ANALYSED. A "not analysed"
        notice written earlier is superseded (it is not delivered again). Returns False (and
        writes nothing) when ``token`` no longer owns the study.
        """
        now = self.now()
        with self._begin() as db:
            written = self._finish_claim(
                db,
                study_key,
                token,
                S.ANALYSED,
                final=not destinations,
                values=_summary(analyses),
            )
            if written is None:
                return False
            db.execute(
                results.delete().where(results.c.study_key == study_key, results.c.kind == "notice")
            )
            for row in produced:
                put_result(db, study_key, row, now)
            _put_findings(db, study_key, analyses)
            for name in destinations:
                open_delivery(db, study_key, name, now)
        return True

    def mark_failed(
        self, study_key: str, reason_code: str, reason: str, token: int | None = None
    ) -> bool:
        """The study cannot be analysed; record why (a permanent failure, not retried).

        When a new image arrived during the analysis, the study is assembled again instead.
        Returns False when ``token`` no longer owns the study.
        """
        with self._begin() as db:
            written = self._finish_claim(db, study_key, token, S.FAILED, reason_code, reason)
        return written is not None

    def release(self, study_key: str, token: int) -> bool:
        """Give a claimed study back to the queue after a transient failure."""
        with self._begin() as db:
            released = move_study(
                db,
                self.now(),
                study_key,
                S.QUEUED,
                when=(S.ANALYSING,),
                where=[studies.c.attempts == token],
                values={"lease_until": None, "claimed_by": None, "reserved_by": None},
                detail="released after a transient error",
            )
        return released is not None

    # --- "not analysed" notices ---------------------------------------------------------------

    def studies_needing_notice(self) -> list[str]:
        """Studies not analysed (not eligible, or failed before any result) with destinations,
        whose "not analysed" SR is not written yet."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies.c.study_key).where(
                    studies.c.state.in_(_NOT_ANALYSED),
                    sa.or_(
                        studies.c.reason_code.is_(None),
                        studies.c.reason_code != "DELIVERY_FAILED",
                    ),
                    studies.c.notice_state.is_(None),
                    studies.c.purged_at.is_(None),
                    studies.c.destinations != "[]",
                )
            )
            return [row.study_key for row in rows]

    def record_notice(self, study_key: str, row: ResultRow) -> bool:
        """The "not analysed" SR is on disk: record it and open its deliveries.

        Only while the study is still not analysed and has no notice; returns whether it did.
        """
        now = self.now()
        with self._begin() as db:
            study = db.execute(
                sa.select(studies.c.state, studies.c.notice_state, studies.c.destinations)
                .where(studies.c.study_key == study_key)
                .with_for_update()
            ).first()
            if study is None or study.notice_state is not None or study.state not in _NOT_ANALYSED:
                return False
            put_result(db, study_key, row, now)
            for name in destination_names(study.destinations):
                open_delivery(db, study_key, name, now, reopen=False)
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key)
                .values(notice_state=NoticeState.WRITTEN, updated_at=now)
            )
            note(db, now, study_key, S(study.state), "not-analysed notice written")
        return True

    def mark_notice_impossible(self, study_key: str, detail: str) -> None:
        """No notice can be written (no readable instance, say); do not try again."""
        now = self.now()
        with self._begin() as db:
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key, studies.c.notice_state.is_(None))
                .values(notice_state=NoticeState.IMPOSSIBLE)
            )
            state = db.execute(
                sa.select(studies.c.state).where(studies.c.study_key == study_key)
            ).scalar()
            if state is not None:
                note(db, now, study_key, S(state), f"no notice: {detail}")


def put_result(db: Connection, study_key: str, row: ResultRow, now: float) -> None:
    """Store (or replace) one result object's row."""
    db.execute(
        results.delete().where(
            results.c.study_key == study_key,
            results.c.sop_instance_uid == row.sop_instance_uid,
        )
    )
    db.execute(
        results.insert().values(
            study_key=study_key,
            sop_instance_uid=row.sop_instance_uid,
            source_sop_instance_uid=row.source_sop_instance_uid,
            kind=row.kind,
            path=row.path,
            created_at=now,
        )
    )


def _summary(analyses: Sequence[ImageAnalysis]) -> dict[str, object]:
    """The study-level columns: highest score and priority of its images, and the model set."""
    if not analyses:
        return {}
    model = analyses[0].model
    return {
        "abnormality_score": max(a.abnormality_score for a in analyses),
        "priority": max((a.priority for a in analyses), key=_PRIORITY_ORDER.index).value,
        "model_name": model.name,
        "model_version": model.version,
        "model_demo": model.demo,
        "model_json": model.model_dump_json(),
    }


def _put_findings(db: Connection, study_key: str, analyses: Sequence[ImageAnalysis]) -> None:
    if not analyses:
        return
    db.execute(findings.delete().where(findings.c.study_key == study_key))
    db.execute(
        findings.insert(),
        [
            {
                "study_key": study_key,
                "sop_instance_uid": analysis.sop_instance_uid,
                "label": finding.label,
                "code_value": finding.code.value,
                "code_scheme": finding.code.scheme,
                "code_meaning": finding.code.meaning,
                "probability": finding.probability,
                "threshold": finding.threshold,
                "present": finding.positive,
                "region_json": json.dumps(finding.region.model_dump()) if finding.region else None,
            }
            for analysis in analyses
            for finding in analysis.findings
        ],
    )
