"""Deliveries: one row per study and destination; one short lease per destination, renewed by
the holder's heartbeat, with the destination's backoff (the same for DICOM, HL7 or DICOMweb).

One delivery task per destination at a time sends every due study over one association, so a
dead destination holds up nothing but itself; a holder that dies stops renewing and its lease
lapses within ``lease_seconds``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import DeliveryRow, delivery_row
from cxr_node.ledger.schema import deliveries, destination_leases, studies
from cxr_node.ledger.transitions import DeliveryState, StudyState, move_delivery, move_study

D = DeliveryState


@dataclass(frozen=True)
class DestinationState:
    """What the ledger knows of a destination's health."""

    failures: int
    down_since: float | None
    retry_at: float | None
    pending: int
    last_error: str | None


def open_delivery(
    db: Connection, study_key: str, destination: str, now: float, *, reopen: bool = True
) -> None:
    """A pending delivery (new, or reopened when ``reopen``); to a destination in backoff, due
    when its backoff ends."""
    retry_at = db.execute(
        sa.select(destination_leases.c.retry_at).where(
            destination_leases.c.destination == destination
        )
    ).scalar()
    fresh = {
        "attempts": 0,
        "last_error": None,
        "updated_at": now,
        "created_at": now,
        "next_attempt_at": max(now, retry_at or now),
        "sent_instances": None,
    }
    exists = db.execute(
        sa.select(deliveries.c.state).where(
            deliveries.c.study_key == study_key, deliveries.c.destination == destination
        )
    ).first()
    if exists is None:
        db.execute(
            deliveries.insert().values(
                study_key=study_key, destination=destination, state=D.PENDING, **fresh
            )
        )
    elif reopen:
        move_delivery(
            db, study_key, destination, D.PENDING, when=tuple(DeliveryState), values=fresh
        )


class DeliveriesLedger(LedgerBase):
    """Destination leases and backoff, and each delivery's outcome."""

    def acquire_destination(self, destination: str, lease_seconds: float) -> str | None:
        """Take the right to deliver to ``destination`` for a while; None when another has it."""
        now = self.now()
        token = uuid.uuid4().hex
        with self._begin() as db:
            known = db.execute(
                sa.select(destination_leases.c.token).where(
                    destination_leases.c.destination == destination
                )
            ).first()
            if known is None:
                try:
                    with db.begin_nested():
                        db.execute(
                            destination_leases.insert().values(
                                destination=destination,
                                token=token,
                                lease_until=now + lease_seconds,
                                failures=0,
                            )
                        )
                    return token
                except sa.exc.IntegrityError:
                    pass  # another worker created it just now; try to take it below
            taken = db.execute(
                destination_leases.update()
                .where(
                    destination_leases.c.destination == destination,
                    sa.or_(
                        destination_leases.c.lease_until.is_(None),
                        destination_leases.c.lease_until < now,
                    ),
                )
                .values(token=token, lease_until=now + lease_seconds)
            ).rowcount
        return token if taken else None

    def renew_destination(self, destination: str, token: str, lease_seconds: float) -> bool:
        """Extend a lease the caller holds (its heartbeat); False when it was lost."""
        with self._begin() as db:
            return bool(
                db.execute(
                    destination_leases.update()
                    .where(
                        destination_leases.c.destination == destination,
                        destination_leases.c.token == token,
                    )
                    .values(lease_until=self.now() + lease_seconds)
                ).rowcount
            )

    def release_destination(self, destination: str, token: str) -> None:
        """Give the lease back."""
        with self._begin() as db:
            db.execute(
                destination_leases.update()
                .where(
                    destination_leases.c.destination == destination,
                    destination_leases.c.token == token,
                )
                .values(token=None, lease_until=None)
            )

    def release_all_destination_leases(self) -> None:
        """When this process owns every worker and none is alive: no lease can be held."""
        with self._begin() as db:
            db.execute(destination_leases.update().values(token=None, lease_until=None))

    def note_destination_outcome(self, destination: str, *, reachable: bool) -> int:
        """Count consecutive failures to reach a destination; returns the count now."""
        with self._begin() as db:
            values: dict[str, Any] = (
                {"failures": 0, "retry_at": None, "down_since": None}
                if reachable
                else {"failures": destination_leases.c.failures + 1}
            )
            db.execute(
                destination_leases.update()
                .where(destination_leases.c.destination == destination)
                .values(**values)
            )
            failures = db.execute(
                sa.select(destination_leases.c.failures).where(
                    destination_leases.c.destination == destination
                )
            ).scalar()
        return int(failures or 0)

    def note_destination_failure(self, destination: str) -> tuple[int, float]:
        """One more failure to reach a destination: (consecutive failures, down since)."""
        now = self.now()
        with self._begin() as db:
            db.execute(
                destination_leases.update()
                .where(destination_leases.c.destination == destination)
                .values(
                    failures=destination_leases.c.failures + 1,
                    down_since=sa.func.coalesce(destination_leases.c.down_since, now),
                )
            )
            row = db.execute(
                sa.select(destination_leases.c.failures, destination_leases.c.down_since).where(
                    destination_leases.c.destination == destination
                )
            ).first()
        if row is None:
            return 1, now
        return int(row.failures), float(row.down_since if row.down_since is not None else now)

    def defer_destination(self, destination: str, until: float, error: str) -> None:
        """The destination cannot be reached: its pending deliveries (and new ones) wait."""
        with self._begin() as db:
            db.execute(
                destination_leases.update()
                .where(destination_leases.c.destination == destination)
                .values(retry_at=until)
            )
            db.execute(
                deliveries.update()
                .where(
                    deliveries.c.destination == destination,
                    deliveries.c.state == D.PENDING,
                    sa.or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at < until,
                    ),
                )
                .values(next_attempt_at=until, last_error=error, updated_at=self.now())
            )

    def destination_states(self) -> dict[str, DestinationState]:
        """Every destination the ledger has met: failures in a row, down since, retry time,
        pending deliveries and the latest error of one still pending or failed."""
        with self._begin() as db:
            leases = {row.destination: row for row in db.execute(sa.select(destination_leases))}
            pending: dict[str, int] = dict(
                db.execute(
                    sa.select(deliveries.c.destination, sa.func.count())
                    .where(deliveries.c.state == D.PENDING)
                    .group_by(deliveries.c.destination)
                ).all()
            )
            errors: dict[str, str] = {}
            for row in db.execute(
                sa.select(deliveries.c.destination, deliveries.c.last_error)
                .where(
                    deliveries.c.last_error.is_not(None),
                    deliveries.c.state.in_([D.PENDING, D.FAILED]),
                )
                .order_by(deliveries.c.updated_at)
            ):
                errors[row.destination] = row.last_error
        names = set(leases) | set(pending)
        return {
            name: DestinationState(
                failures=int(leases[name].failures or 0) if name in leases else 0,
                down_since=leases[name].down_since if name in leases else None,
                retry_at=leases[name].retry_at if name in leases else None,
                pending=int(pending.get(name, 0)),
                last_error=errors.get(name),
            )
            for name in names
        }

    def due_deliveries(self, destination: str, limit: int = 50) -> list[DeliveryRow]:
        """Pending deliveries to ``destination`` whose time has come, oldest first."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries)
                .where(deliveries.c.destination == destination, self._due())
                .order_by(deliveries.c.next_attempt_at, deliveries.c.created_at)
                .limit(limit)
            ).all()
        return [delivery_row(row) for row in rows]

    def _due(self) -> sa.ColumnElement[bool]:
        return sa.and_(
            deliveries.c.state == D.PENDING,
            sa.or_(
                deliveries.c.next_attempt_at.is_(None),
                deliveries.c.next_attempt_at <= self.now(),
            ),
        )

    def next_delivery_at(self, destination: str) -> float | None:
        """When the next pending delivery to ``destination`` is due (epoch seconds), or None."""
        with self._begin() as db:
            value = db.execute(
                sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.destination == destination,
                    deliveries.c.state == D.PENDING,
                )
            ).scalar()
        return float(value) if value is not None else None

    def destinations_due(self) -> list[str]:
        """Destinations with due deliveries that no live lease holds (recovery re-sends)."""
        with self._begin() as db:
            held = sa.select(destination_leases.c.destination).where(
                destination_leases.c.lease_until >= self.now()
            )
            rows = db.execute(
                sa.select(deliveries.c.destination)
                .where(self._due(), deliveries.c.destination.not_in(held))
                .distinct()
            )
            return sorted(row[0] for row in rows)

    def pending_destinations(self) -> list[str]:
        """Every destination that some pending delivery names."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries.c.destination)
                .where(deliveries.c.state == D.PENDING)
                .distinct()
            )
            return sorted(row[0] for row in rows)

    def record_delivery(
        self,
        study_key: str,
        destination: str,
        state: DeliveryState,
        error: str | None = None,
        next_attempt_at: float | None = None,
        *,
        opened_at: float | None = None,
    ) -> None:
        """One delivery attempt's outcome; the study becomes DELIVERED when none is pending.

        A PENDING outcome (a transient failure) says when to try again. Only an ANALYSED study
        changes state: a "not analysed" notice's delivery leaves its study's reason alone.
        With ``opened_at`` (the delivery's ``created_at`` when the sender read it), nothing is
        written unless that same delivery is still pending: one reopened meanwhile (the study
        analysed again) is not marked by an attempt that sent the older results.
        """
        now = self.now()
        with self._begin() as db:
            # Lock the study row first: two destinations finishing at once must not both see
            # the other still pending (READ COMMITTED on PostgreSQL); SQLite serialises anyway.
            db.execute(
                sa.select(studies.c.study_key)
                .where(studies.c.study_key == study_key)
                .with_for_update()
            ).first()
            where = [] if opened_at is None else [deliveries.c.created_at == opened_at]
            changed = move_delivery(
                db,
                study_key,
                destination,
                state,
                when=(D.PENDING,),
                where=where,
                values={
                    "attempts": deliveries.c.attempts + 1,
                    "last_error": error,
                    "updated_at": now,
                    "next_attempt_at": next_attempt_at if state == D.PENDING else None,
                },
            )
            if changed is None:
                return
            states = {
                row.state
                for row in db.execute(
                    sa.select(deliveries.c.state).where(deliveries.c.study_key == study_key)
                )
            }
            if D.PENDING in states:
                return
            if states <= {D.DELIVERED}:
                move_study(db, now, study_key, StudyState.DELIVERED, when=(StudyState.ANALYSED,))
            else:
                move_study(
                    db,
                    now,
                    study_key,
                    StudyState.FAILED,
                    when=(StudyState.ANALYSED,),
                    values={"reason_code": "DELIVERY_FAILED", "reason": error},
                    detail="DELIVERY_FAILED",
                )

    def retry_delivery(self, study_key: str, destination: str) -> str | None:
        """An operator asks for a study's results to go to ``destination`` again (all of them:
        the destination may have lost them). Returns None when the delivery is pending again
        (due now, or when the destination's backoff ends), else why not. A study that came to
        rest as DELIVERED, or FAILED because a delivery failed, is ANALYSED again until the
        delivery ends; its analysis time is kept."""
        now = self.now()
        with self._begin() as db:
            study = db.execute(
                sa.select(studies.c.state, studies.c.reason_code)
                .where(studies.c.study_key == study_key)
                .with_for_update()
            ).first()
            if study is None:
                return "unknown study"
            known = db.execute(
                sa.select(deliveries.c.state).where(
                    deliveries.c.study_key == study_key, deliveries.c.destination == destination
                )
            ).first()
            if known is None:
                return f"the study has no delivery to {destination}"
            state = StudyState(study.state)
            if state in {StudyState.RECEIVED, StudyState.QUEUED, StudyState.ANALYSING}:
                return "the study is being analysed; its results go out when it is done"
            if state is StudyState.FAILED and study.reason_code != "DELIVERY_FAILED":
                return "the study's analysis failed: there is nothing to send"
            open_delivery(db, study_key, destination, now)
            if state in {StudyState.DELIVERED, StudyState.FAILED}:
                move_study(
                    db,
                    now,
                    study_key,
                    StudyState.ANALYSED,
                    when=(state,),
                    values={
                        "analysed_at": studies.c.analysed_at,
                        "reason_code": None,
                        "reason": None,
                    },
                    detail=f"delivery to {destination} requested again",
                )
        return None

    def record_instance_sent(
        self, study_key: str, destination: str, sop_instance_uid: str, *, opened_at: float
    ) -> None:
        """The destination acknowledged one result instance of a pending delivery (PS3.4
        B.2.3: a success or warning status), so a retry of this opening does not send it again.
        Nothing is written when the delivery was reopened meanwhile (``opened_at`` differs)."""
        with self._begin() as db:
            where = (
                deliveries.c.study_key == study_key,
                deliveries.c.destination == destination,
                deliveries.c.state == D.PENDING,
                deliveries.c.created_at == opened_at,
            )
            sent = db.execute(
                sa.select(deliveries.c.sent_instances).where(*where).with_for_update()
            ).first()
            if sent is None:
                return
            uids = json.loads(sent.sent_instances or "[]")
            if sop_instance_uid in uids:
                return
            db.execute(
                deliveries.update()
                .where(*where)
                .values(sent_instances=json.dumps([*uids, sop_instance_uid]))
            )

    def record_sent_priority(self, study_key: str, destination: str, priority: str) -> None:
        """The priority an HL7 message for the study asked for (kept across reopenings)."""
        with self._begin() as db:
            db.execute(
                deliveries.update()
                .where(deliveries.c.study_key == study_key, deliveries.c.destination == destination)
                .values(sent_priority=priority)
            )

    def sent_priorities(self, study_key: str) -> list[str]:
        """Every priority an HL7 message for the study has asked for, at any destination."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries.c.sent_priority).where(
                    deliveries.c.study_key == study_key, deliveries.c.sent_priority.is_not(None)
                )
            )
            return [str(row.sent_priority) for row in rows]

    def settled(self, study_key: str) -> bool:
        """Whether no delivery of the study is pending (its files are no longer needed to send)."""
        with self._begin() as db:
            pending = db.execute(
                sa.select(sa.func.count())
                .select_from(deliveries)
                .where(deliveries.c.study_key == study_key, deliveries.c.state == D.PENDING)
            ).scalar_one()
        return not pending
