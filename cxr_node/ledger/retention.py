"""Spool retention: which finished studies' files may go, and marking them purged.

A study is finished when it is delivered, failed for good, not eligible, or analysed without
destinations, and no delivery of it (results or "not analysed" notice) is pending, and no
notice is still to be written. The ledger keeps every row; ``purged_at`` says the files went.
"""

from __future__ import annotations

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import PurgeCandidate
from cxr_node.ledger.schema import deliveries, instances, results, studies
from cxr_node.ledger.transitions import DeliveryState, StudyState

S = StudyState


class RetentionLedger(LedgerBase):
    """Finished studies, oldest first, and their purge."""

    def purge_candidates(
        self, *, finished_before: float | None, notices_expected: bool, limit: int = 1000
    ) -> list[PurgeCandidate]:
        """Finished, unpurged studies (finished before ``finished_before``, or any when None),
        oldest first, with the spool paths of their images and results."""
        pending = sa.select(deliveries.c.study_key).where(
            deliveries.c.state == DeliveryState.PENDING
        )
        conditions: list[sa.ColumnElement[bool]] = [
            studies.c.finished_at.is_not(None),
            studies.c.purged_at.is_(None),
            studies.c.state.in_([S.DELIVERED, S.NOT_ELIGIBLE, S.FAILED, S.ANALYSED]),
            studies.c.study_key.not_in(pending),
        ]
        if finished_before is not None:
            conditions.append(studies.c.finished_at <= finished_before)
        if notices_expected:
            # a not-analysed study with destinations waits for its notice to be written
            conditions.append(
                sa.or_(
                    studies.c.state.in_([S.DELIVERED, S.ANALYSED]),
                    studies.c.notice_state.is_not(None),
                    studies.c.destinations == "[]",
                    studies.c.reason_code == "DELIVERY_FAILED",
                )
            )
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies.c.study_key, studies.c.study_uid, studies.c.finished_at)
                .where(*conditions)
                .order_by(studies.c.finished_at)
                .limit(limit)
            ).all()
            candidates = []
            for row in rows:
                paths = [
                    r.path
                    for r in db.execute(
                        sa.select(instances.c.path).where(instances.c.study_key == row.study_key)
                    )
                ]
                paths += [
                    r.path
                    for r in db.execute(
                        sa.select(results.c.path).where(results.c.study_key == row.study_key)
                    )
                ]
                candidates.append(
                    PurgeCandidate(row.study_key, row.study_uid, row.finished_at, paths)
                )
        return candidates

    def mark_purged(self, study_key: str, finished_at: float) -> bool:
        """The study's files were deleted; False (nothing marked) when it changed meanwhile."""
        now = self.now()
        with self._begin() as db:
            changed = db.execute(
                studies.update()
                .where(
                    studies.c.study_key == study_key,
                    studies.c.finished_at == finished_at,
                    studies.c.purged_at.is_(None),
                )
                .values(purged_at=now)
            ).rowcount
            if changed:
                from cxr_node.ledger.transitions import note

                state = db.execute(
                    sa.select(studies.c.state).where(studies.c.study_key == study_key)
                ).scalar_one()
                note(db, now, study_key, S(state), "spooled files purged")
        return bool(changed)

    def still_finished(self, study_key: str, finished_at: float) -> bool:
        """Whether the study is unchanged since it was listed for purging (checked just before
        its files are deleted)."""
        with self._begin() as db:
            return (
                db.execute(
                    sa.select(studies.c.study_key).where(
                        studies.c.study_key == study_key,
                        studies.c.finished_at == finished_at,
                        studies.c.purged_at.is_(None),
                    )
                ).first()
                is not None
            )
