"""The study ledger: the single source of truth for where every study and instance is.

Every arrow of the data flow is a state change recorded here, so that after any crash the node
resumes without losing or duplicating work. SQLite by default (WAL, busy timeout); any
SQLAlchemy URL (e.g. PostgreSQL, for workers on several machines) works.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cxr_node.jobs import Destination


class StudyState(StrEnum):
    """States of a study, in the order it normally passes through them."""

    RECEIVED = "received"
    QUEUED = "queued"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    DELIVERED = "delivered"
    NOT_ELIGIBLE = "not_eligible"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """States of the delivery of one study's results to one destination."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


_metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    _metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("reason_code", sa.String(40)),
    sa.Column("reason", sa.Text),
    sa.Column("calling_ae", sa.String(16)),
    sa.Column("destinations", sa.Text, nullable=False, default="[]"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_received_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("claimed_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
)

instances = sa.Table(
    "instances",
    _metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("eligible", sa.Boolean, nullable=False),
    sa.Column("reason_code", sa.String(40)),
    sa.Column("reason", sa.Text),
    sa.Column("received_at", sa.Float, nullable=False),
)

results = sa.Table(
    "results",
    _metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("source_sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    _metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("destination", sa.String(120), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
)

events = sa.Table(
    "events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_key", sa.String(80), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text),
)


@dataclass(frozen=True)
class StudyRow:
    """A study as the ledger holds it."""

    study_key: str
    study_uid: str
    state: StudyState
    reason_code: str | None
    reason: str | None
    destinations: list[Destination]
    last_received_at: float
    updated_at: float
    attempts: int


@dataclass(frozen=True)
class InstanceRow:
    """An instance as the ledger holds it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str
    eligible: bool
    reason_code: str | None
    reason: str | None


@dataclass(frozen=True)
class ResultRow:
    """A result object written for a study."""

    sop_instance_uid: str
    source_sop_instance_uid: str
    kind: str
    path: str


def _engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class Ledger:
    """Records and answers where each study and instance is."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._engine = _engine(url)
        _metadata.create_all(self._engine)

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._engine.begin() as connection:
            yield connection

    # --- intake -------------------------------------------------------------------------------

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
        destinations: list[Destination],
    ) -> bool:
        """Record a spooled instance; return False when the instance was already known."""
        now = time.time()

        def attempt() -> bool:
            with self._begin() as db:
                if self._instance_known(db, study_key, sop_instance_uid):
                    return False
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
                    )
                )
                study = db.execute(
                    sa.select(studies.c.state).where(studies.c.study_key == study_key)
                ).first()
                payload = json.dumps([d.model_dump() for d in destinations])
                if study is None:
                    db.execute(
                        studies.insert().values(
                            study_key=study_key,
                            study_uid=study_uid,
                            state=StudyState.RECEIVED,
                            calling_ae=calling_ae,
                            destinations=payload,
                            created_at=now,
                            updated_at=now,
                            last_received_at=now,
                            attempts=0,
                        )
                    )
                else:
                    # A new image in a known study: assemble it again once the study is quiet.
                    values: dict[str, Any] = {"last_received_at": now, "updated_at": now}
                    if study.state in {
                        StudyState.DELIVERED,
                        StudyState.NOT_ELIGIBLE,
                        StudyState.FAILED,
                        StudyState.ANALYSED,
                    }:
                        values.update(state=StudyState.RECEIVED, reason_code=None, reason=None)
                    db.execute(
                        studies.update().where(studies.c.study_key == study_key).values(**values)
                    )
                self._event(db, study_key, StudyState.RECEIVED, f"instance {reason_code or 'ok'}")
            return True

        try:
            return attempt()
        except sa.exc.IntegrityError:
            # Another association stored the same instance (or study) between our check and our
            # insert; the second attempt sees its row.
            return attempt()

    @staticmethod
    def _instance_known(db: Connection, study_key: str, sop_instance_uid: str) -> bool:
        return (
            db.execute(
                sa.select(instances.c.path).where(
                    instances.c.study_key == study_key,
                    instances.c.sop_instance_uid == sop_instance_uid,
                )
            ).first()
            is not None
        )

    # --- assembly and recovery ----------------------------------------------------------------

    def studies_quiet_since(self, quiet_seconds: float) -> list[str]:
        """Studies in RECEIVED whose last instance arrived at least ``quiet_seconds`` ago."""
        cutoff = time.time() - quiet_seconds
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies.c.study_key).where(
                    studies.c.state == StudyState.RECEIVED, studies.c.last_received_at <= cutoff
                )
            )
            return [row.study_key for row in rows]

    def mark_queued(self, study_key: str, expect: StudyState | None = None) -> bool:
        """The study's job is about to be handed to the queue; with ``expect``, only from there."""
        return self._set_state(study_key, StudyState.QUEUED, expect=expect)

    def mark_not_eligible(self, study_key: str, reason_code: str, reason: str) -> None:
        """No image of the study can be analysed; say why."""
        self._set_state(
            study_key,
            StudyState.NOT_ELIGIBLE,
            reason_code=reason_code,
            reason=reason,
            expect=StudyState.RECEIVED,
        )

    def stale_studies(self, *, queued_older_than: float, all_analysing: bool) -> list[StudyRow]:
        """Studies whose job may have been lost: old QUEUED, expired (or all) ANALYSING leases."""
        now = time.time()
        lease_expired = sa.or_(studies.c.lease_until.is_(None), studies.c.lease_until < now)
        analysing = studies.c.state == StudyState.ANALYSING
        condition = sa.or_(
            sa.and_(
                studies.c.state == StudyState.QUEUED,
                studies.c.updated_at <= now - queued_older_than,
            ),
            analysing if all_analysing else sa.and_(analysing, lease_expired),
        )
        with self._begin() as db:
            rows = db.execute(sa.select(studies).where(condition)).all()
        return [self._study_row(row) for row in rows]

    def undelivered_studies(self, older_than: float) -> list[str]:
        """ANALYSED studies with pending deliveries not touched for ``older_than`` seconds."""
        cutoff = time.time() - older_than
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries.c.study_key)
                .join(studies, studies.c.study_key == deliveries.c.study_key)
                .where(
                    studies.c.state == StudyState.ANALYSED,
                    deliveries.c.state == DeliveryState.PENDING,
                    deliveries.c.updated_at <= cutoff,
                )
                .distinct()
            )
            return [row[0] for row in rows]

    def touch_deliveries(self, study_key: str) -> None:
        """Note that a study's delivery was re-sent, so recovery does not resend it again soon."""
        with self._begin() as db:
            db.execute(
                deliveries.update()
                .where(
                    deliveries.c.study_key == study_key,
                    deliveries.c.state == DeliveryState.PENDING,
                )
                .values(updated_at=time.time())
            )

    # --- analysis -----------------------------------------------------------------------------

    def claim(self, study_key: str, lease_seconds: float, max_attempts: int = 3) -> int | None:
        """Atomically take a QUEUED (or lease-expired ANALYSING) study for analysis.

        Returns the claim's token (the attempt number), which later writes must present, or
        None when the study is not free. A study whose analysis has been tried ``max_attempts``
        times (each one lost to a crash, say) fails with TOO_MANY_ATTEMPTS instead of looping.
        """
        now = time.time()
        claimable = sa.and_(
            studies.c.study_key == study_key,
            sa.or_(
                studies.c.state == StudyState.QUEUED,
                sa.and_(studies.c.state == StudyState.ANALYSING, studies.c.lease_until < now),
            ),
        )
        with self._begin() as db:
            claimed = db.execute(
                studies.update()
                .where(claimable, studies.c.attempts < max_attempts)
                .values(
                    state=StudyState.ANALYSING,
                    lease_until=now + lease_seconds,
                    claimed_at=now,
                    updated_at=now,
                    attempts=studies.c.attempts + 1,
                )
            ).rowcount
            if claimed:
                self._event(db, study_key, StudyState.ANALYSING, None)
                token = db.execute(
                    sa.select(studies.c.attempts).where(studies.c.study_key == study_key)
                ).scalar_one()
                return int(token)
            exhausted = db.execute(
                studies.update()
                .where(claimable)
                .values(
                    state=StudyState.FAILED,
                    reason_code="TOO_MANY_ATTEMPTS",
                    reason=f"analysis did not complete in {max_attempts} attempts",
                    lease_until=None,
                    updated_at=now,
                )
            ).rowcount
            if exhausted:
                self._event(db, study_key, StudyState.FAILED, "TOO_MANY_ATTEMPTS")
        return None

    def _finish_claim(
        self,
        db: Connection,
        study_key: str,
        token: int | None,
        state: StudyState,
        reason_code: str | None = None,
        reason: str | None = None,
    ) -> StudyState | None:
        """End an analysis the caller owns; a study that got an image meanwhile is reassembled.

        Returns the state written, or None when the claim is no longer the caller's (its lease
        expired and another worker took the study): then nothing is written.
        """
        owner = studies.c.study_key == study_key
        if token is not None:
            owner = sa.and_(
                owner, studies.c.state == StudyState.ANALYSING, studies.c.attempts == token
            )
        row = db.execute(
            sa.select(studies.c.last_received_at, studies.c.claimed_at).where(owner)
        ).first()
        if row is None:
            return None
        if row.claimed_at is not None and row.last_received_at > row.claimed_at:
            state = StudyState.RECEIVED  # an image arrived during the analysis: assemble again
        db.execute(
            studies.update()
            .where(owner)
            .values(
                state=state,
                reason_code=reason_code,
                reason=reason,
                lease_until=None,
                updated_at=time.time(),
            )
        )
        self._event(db, study_key, state, reason_code)
        return state

    def record_results(
        self,
        study_key: str,
        produced: list[ResultRow],
        destinations: list[Destination],
        token: int | None = None,
    ) -> bool:
        """Results are on disk: store them, open a delivery per destination, state ANALYSED.

        Without destinations the study rests in ANALYSED. Returns False (and writes nothing)
        when ``token`` no longer owns the study.
        """
        now = time.time()
        with self._begin() as db:
            if self._finish_claim(db, study_key, token, StudyState.ANALYSED) is None:
                return False
            for row in produced:
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
            for destination in destinations:
                db.execute(
                    deliveries.delete().where(
                        deliveries.c.study_key == study_key,
                        deliveries.c.destination == str(destination),
                    )
                )
                db.execute(
                    deliveries.insert().values(
                        study_key=study_key,
                        destination=str(destination),
                        state=DeliveryState.PENDING,
                        attempts=0,
                        updated_at=now,
                    )
                )
        return True

    def mark_failed(
        self, study_key: str, reason_code: str, reason: str, token: int | None = None
    ) -> bool:
        """The study cannot be analysed; record why (a permanent failure, not retried).

        When a new image arrived during the analysis, the study is assembled again instead.
        Returns False when ``token`` no longer owns the study.
        """
        with self._begin() as db:
            written = self._finish_claim(
                db, study_key, token, StudyState.FAILED, reason_code, reason
            )
        return written is not None

    def release(self, study_key: str, token: int) -> bool:
        """Give a claimed study back to the queue after a transient failure."""
        with self._begin() as db:
            released = db.execute(
                studies.update()
                .where(
                    studies.c.study_key == study_key,
                    studies.c.state == StudyState.ANALYSING,
                    studies.c.attempts == token,
                )
                .values(state=StudyState.QUEUED, lease_until=None, updated_at=time.time())
            ).rowcount
            if released:
                self._event(db, study_key, StudyState.QUEUED, "released after a transient error")
        return bool(released)

    # --- delivery -----------------------------------------------------------------------------

    def pending_deliveries(self, study_key: str) -> list[str]:
        """Destinations (``AE@HOST:PORT``) that still wait for this study's results."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries.c.destination).where(
                    deliveries.c.study_key == study_key,
                    deliveries.c.state == DeliveryState.PENDING,
                )
            )
            return [row[0] for row in rows]

    def record_delivery(
        self, study_key: str, destination: str, state: DeliveryState, error: str | None = None
    ) -> None:
        """One delivery attempt's outcome; the study becomes DELIVERED when none is pending."""
        now = time.time()
        with self._begin() as db:
            db.execute(
                deliveries.update()
                .where(deliveries.c.study_key == study_key, deliveries.c.destination == destination)
                .values(
                    state=state,
                    attempts=deliveries.c.attempts + 1,
                    last_error=error,
                    updated_at=now,
                )
            )
            remaining = db.execute(
                sa.select(deliveries.c.state).where(deliveries.c.study_key == study_key)
            ).all()
            states = {row.state for row in remaining}
            if DeliveryState.PENDING not in states:
                final = (
                    StudyState.DELIVERED
                    if states <= {DeliveryState.DELIVERED}
                    else StudyState.FAILED
                )
                values: dict[str, Any] = {"state": final, "updated_at": now}
                if final is StudyState.FAILED:
                    values.update(reason_code="DELIVERY_FAILED", reason=error)
                closed = db.execute(
                    studies.update()
                    .where(
                        studies.c.study_key == study_key,
                        studies.c.state == StudyState.ANALYSED,
                    )
                    .values(**values)
                ).rowcount
                if closed:
                    self._event(db, study_key, final, None)

    # --- queries ------------------------------------------------------------------------------

    def study(self, study_key: str) -> StudyRow | None:
        """One study, or None."""
        with self._begin() as db:
            row = db.execute(sa.select(studies).where(studies.c.study_key == study_key)).first()
        return self._study_row(row) if row is not None else None

    def list_studies(self, limit: int = 50) -> list[StudyRow]:
        """The most recently updated studies first."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies).order_by(studies.c.updated_at.desc()).limit(limit)
            ).all()
        return [self._study_row(row) for row in rows]

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
        """Spool-relative paths of the study's images that may be analysed, as of now."""
        return [i.path for i in self.instances_of(study_key) if i.eligible]

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

    def deliveries_of(self, study_key: str) -> dict[str, tuple[str, int, str | None]]:
        """Destination -> (state, attempts, last error) for one study."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries).where(deliveries.c.study_key == study_key)
            ).all()
        return {row.destination: (row.state, row.attempts, row.last_error) for row in rows}

    # --- helpers ------------------------------------------------------------------------------

    def _set_state(
        self,
        study_key: str,
        state: StudyState,
        *,
        reason_code: str | None = None,
        reason: str | None = None,
        expect: StudyState | None = None,
    ) -> bool:
        with self._begin() as db:
            query = studies.update().where(studies.c.study_key == study_key)
            if expect is not None:
                query = query.where(studies.c.state == expect)
            changed = db.execute(
                query.values(
                    state=state,
                    reason_code=reason_code,
                    reason=reason,
                    lease_until=None,
                    updated_at=time.time(),
                )
            ).rowcount
            if changed:
                self._event(db, study_key, state, reason_code)
        return bool(changed)

    @staticmethod
    def _event(db: Connection, study_key: str, state: StudyState, detail: str | None) -> None:
        db.execute(
            events.insert().values(study_key=study_key, at=time.time(), state=state, detail=detail)
        )

    @staticmethod
    def _study_row(row: Any) -> StudyRow:
        return StudyRow(
            study_key=row.study_key,
            study_uid=row.study_uid,
            state=StudyState(row.state),
            reason_code=row.reason_code,
            reason=row.reason,
            destinations=[Destination(**item) for item in json.loads(row.destinations or "[]")],
            last_received_at=row.last_received_at,
            updated_at=row.updated_at,
            attempts=row.attempts,
        )
