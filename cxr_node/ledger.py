"""The study ledger: the single source of truth for where every study and instance is.

Every arrow of the data flow is a state change recorded here, so that after any crash the node
resumes without losing or duplicating work. SQLite by default (WAL, busy timeout); any
SQLAlchemy URL (e.g. PostgreSQL, for workers on several machines) works.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cxr_node.destinations import SourceRule


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
    sa.Column("notice_state", sa.String(20)),
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
    sa.Column("sha256", sa.String(64)),
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
    sa.Column("created_at", sa.Float),
    sa.Column("next_attempt_at", sa.Float),
)

destination_leases = sa.Table(
    "destination_leases",
    _metadata,
    sa.Column("destination", sa.String(120), primary_key=True),
    sa.Column("token", sa.String(40)),
    sa.Column("lease_until", sa.Float),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("retry_at", sa.Float),
    sa.Column("down_since", sa.Float),
)

sources = sa.Table(
    "sources",
    _metadata,
    sa.Column("ae_title", sa.String(16), primary_key=True),
    sa.Column("host", sa.String(64), primary_key=True, default=""),
    sa.Column("destinations", sa.Text, nullable=False, default="[]"),
    sa.Column("updated_at", sa.Float, nullable=False),
)

changes = sa.Table(
    "changes",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("what", sa.Text, nullable=False),
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
    destinations: list[str]
    last_received_at: float
    updated_at: float
    attempts: int
    calling_ae: str | None = None
    notice_state: str | None = None
    created_at: float = 0.0


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


@dataclass(frozen=True)
class DeliveryRow:
    """The delivery of one study's results to one destination."""

    study_key: str
    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    created_at: float
    next_attempt_at: float | None


class NoticeState(StrEnum):
    """Whether the "not analysed" SR of a study was written (or cannot be)."""

    WRITTEN = "written"
    IMPOSSIBLE = "impossible"


_FINISHED_NOT_ANALYSED = (StudyState.NOT_ELIGIBLE, StudyState.FAILED)


def _destination_names(payload: str | None) -> list[str]:
    """Destination names stored with a study (a ledger written before names held mappings)."""
    items = json.loads(payload or "[]")
    return [str(item["ae_title"]) if isinstance(item, dict) else str(item) for item in items]


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
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added since a ledger was created (nullable, so ADD COLUMN suffices)."""
        inspector = sa.inspect(self._engine)
        with self._begin() as db:
            for table in _metadata.sorted_tables:
                present = {column["name"] for column in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present and column.nullable:
                        kind = column.type.compile(self._engine.dialect)
                        db.execute(
                            sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                        )
                        if (table.name, column.name) == ("studies", "notice_state"):
                            # studies finished before notices existed do not get one now
                            db.execute(
                                studies.update()
                                .where(studies.c.state.in_(_FINISHED_NOT_ANALYSED))
                                .values(notice_state=NoticeState.IMPOSSIBLE)
                            )
                        if (table.name, column.name) == ("deliveries", "created_at"):
                            db.execute(
                                deliveries.update().values(created_at=deliveries.c.updated_at)
                            )

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
        destinations: list[str],
        sha256: str | None = None,
    ) -> bool:
        """Record a spooled instance; return False when the instance was already known with the
        same content. Known with other content (a corrected image), it replaces the old row and
        the study is assembled again."""
        now = time.time()

        def attempt() -> bool:
            with self._begin() as db:
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
                study = db.execute(
                    sa.select(studies.c.state).where(studies.c.study_key == study_key)
                ).first()
                payload = json.dumps(list(destinations))
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
                        values.update(
                            state=StudyState.RECEIVED,
                            reason_code=None,
                            reason=None,
                            notice_state=None,
                        )
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

        Returns the state it left, or None when it is unknown or being analysed right now.
        """
        with self._begin() as db:
            row = db.execute(
                sa.select(studies.c.state).where(studies.c.study_key == study_key)
            ).first()
            if row is None or row.state in {StudyState.QUEUED, StudyState.ANALYSING}:
                return None
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key)
                .values(
                    state=StudyState.RECEIVED,
                    reason_code=None,
                    reason=None,
                    notice_state=None,
                    attempts=0,
                    lease_until=None,
                    last_received_at=0.0,
                    updated_at=time.time(),
                )
            )
            self._event(db, study_key, StudyState.RECEIVED, "reprocess requested")
            return StudyState(row.state)

    # --- assembly and recovery ----------------------------------------------------------------

    def is_receiving(self, study_key: str) -> bool:
        """Whether the study is in RECEIVED (waiting to be assembled)."""
        with self._begin() as db:
            state = db.execute(
                sa.select(studies.c.state).where(studies.c.study_key == study_key)
            ).scalar()
        return state == StudyState.RECEIVED

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
        destinations: list[str],
        token: int | None = None,
    ) -> bool:
        """Results are on disk: store them, open a delivery per destination, state ANALYSED.

        Without destinations the study rests in ANALYSED. A "not analysed" notice written
        earlier is superseded (it is not delivered again). Returns False (and writes nothing)
        when ``token`` no longer owns the study.
        """
        now = time.time()
        with self._begin() as db:
            if self._finish_claim(db, study_key, token, StudyState.ANALYSED) is None:
                return False
            db.execute(
                results.delete().where(results.c.study_key == study_key, results.c.kind == "notice")
            )
            for row in produced:
                self._put_result(db, study_key, row, now)
            for name in destinations:
                db.execute(
                    deliveries.delete().where(
                        deliveries.c.study_key == study_key, deliveries.c.destination == name
                    )
                )
                self._open_delivery(db, study_key, name, now)
        return True

    @staticmethod
    def _put_result(db: Connection, study_key: str, row: ResultRow, now: float) -> None:
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

    @staticmethod
    def _open_delivery(db: Connection, study_key: str, destination: str, now: float) -> None:
        """A new pending delivery; to a destination in backoff, due when its backoff ends."""
        retry_at = db.execute(
            sa.select(destination_leases.c.retry_at).where(
                destination_leases.c.destination == destination
            )
        ).scalar()
        db.execute(
            deliveries.insert().values(
                study_key=study_key,
                destination=destination,
                state=DeliveryState.PENDING,
                attempts=0,
                updated_at=now,
                created_at=now,
                next_attempt_at=max(now, retry_at or now),
            )
        )

    # --- "not analysed" notices ---------------------------------------------------------------

    def studies_needing_notice(self) -> list[str]:
        """Studies not analysed (not eligible, or failed before any result) with destinations,
        whose "not analysed" SR is not written yet."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(studies.c.study_key).where(
                    studies.c.state.in_([StudyState.NOT_ELIGIBLE, StudyState.FAILED]),
                    sa.or_(
                        studies.c.reason_code.is_(None),
                        studies.c.reason_code != "DELIVERY_FAILED",
                    ),
                    studies.c.notice_state.is_(None),
                    studies.c.destinations != "[]",
                )
            )
            return [row.study_key for row in rows]

    def record_notice(self, study_key: str, row: ResultRow) -> bool:
        """The "not analysed" SR is on disk: record it and open its deliveries.

        Only while the study is still not analysed and has no notice; returns whether it did.
        """
        now = time.time()
        with self._begin() as db:
            study = db.execute(
                sa.select(studies.c.state, studies.c.notice_state, studies.c.destinations).where(
                    studies.c.study_key == study_key
                )
            ).first()
            if (
                study is None
                or study.notice_state is not None
                or study.state not in {StudyState.NOT_ELIGIBLE, StudyState.FAILED}
            ):
                return False
            self._put_result(db, study_key, row, now)
            for name in _destination_names(study.destinations):
                exists = db.execute(
                    sa.select(deliveries.c.state).where(
                        deliveries.c.study_key == study_key, deliveries.c.destination == name
                    )
                ).first()
                if exists is None:
                    self._open_delivery(db, study_key, name, now)
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key)
                .values(notice_state=NoticeState.WRITTEN)
            )
            self._event(db, study_key, StudyState(study.state), "not-analysed notice written")
        return True

    def mark_notice_impossible(self, study_key: str, detail: str) -> None:
        """No notice can be written (no readable instance, say); do not try again."""
        with self._begin() as db:
            db.execute(
                studies.update()
                .where(studies.c.study_key == study_key, studies.c.notice_state.is_(None))
                .values(notice_state=NoticeState.IMPOSSIBLE)
            )
            row = db.execute(
                sa.select(studies.c.state).where(studies.c.study_key == study_key)
            ).first()
            if row is not None:
                self._event(db, study_key, StudyState(row.state), f"no notice: {detail}")

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
    #
    # One delivery task per destination at a time (a lease in the ledger): it sends every due
    # study over one association, so a dead destination holds up nothing but itself.

    def acquire_destination(self, destination: str, lease_seconds: float) -> str | None:
        """Take the right to deliver to ``destination`` for a while; None when another has it."""
        now = time.time()
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
        """Extend a lease the caller holds; False when it was lost."""
        with self._begin() as db:
            return bool(
                db.execute(
                    destination_leases.update()
                    .where(
                        destination_leases.c.destination == destination,
                        destination_leases.c.token == token,
                    )
                    .values(lease_until=time.time() + lease_seconds)
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
        """At start, when this process owns every worker: no lease can be held any more."""
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
        now = time.time()
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
                    deliveries.c.state == DeliveryState.PENDING,
                    sa.or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at < until,
                    ),
                )
                .values(next_attempt_at=until, last_error=error, updated_at=time.time())
            )

    def due_deliveries(self, destination: str, limit: int = 50) -> list[DeliveryRow]:
        """Pending deliveries to ``destination`` whose time has come, oldest first."""
        now = time.time()
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries)
                .where(
                    deliveries.c.destination == destination,
                    deliveries.c.state == DeliveryState.PENDING,
                    sa.or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at <= now,
                    ),
                )
                .order_by(deliveries.c.next_attempt_at, deliveries.c.created_at)
                .limit(limit)
            ).all()
        return [self._delivery_row(row) for row in rows]

    def next_delivery_at(self, destination: str) -> float | None:
        """When the next pending delivery to ``destination`` is due (epoch seconds), or None."""
        with self._begin() as db:
            value = db.execute(
                sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
                    deliveries.c.destination == destination,
                    deliveries.c.state == DeliveryState.PENDING,
                )
            ).scalar()
        return float(value) if value is not None else None

    def destinations_due(self) -> list[str]:
        """Destinations with due deliveries that no delivery task holds (recovery re-sends)."""
        now = time.time()
        with self._begin() as db:
            held = sa.select(destination_leases.c.destination).where(
                destination_leases.c.lease_until >= now
            )
            rows = db.execute(
                sa.select(deliveries.c.destination)
                .where(
                    deliveries.c.state == DeliveryState.PENDING,
                    sa.or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at <= now,
                    ),
                    deliveries.c.destination.not_in(held),
                )
                .distinct()
            )
            return sorted(row[0] for row in rows)

    def pending_destinations(self) -> list[str]:
        """Every destination that some pending delivery names."""
        with self._begin() as db:
            rows = db.execute(
                sa.select(deliveries.c.destination)
                .where(deliveries.c.state == DeliveryState.PENDING)
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
        now = time.time()
        with self._begin() as db:
            # Lock the study row first: two destinations finishing at once must not both see
            # the other still pending (READ COMMITTED on PostgreSQL); SQLite serialises anyway.
            db.execute(
                sa.select(studies.c.study_key)
                .where(studies.c.study_key == study_key)
                .with_for_update()
            ).first()
            which = sa.and_(
                deliveries.c.study_key == study_key, deliveries.c.destination == destination
            )
            if opened_at is not None:
                which = sa.and_(
                    which,
                    deliveries.c.state == DeliveryState.PENDING,
                    deliveries.c.created_at == opened_at,
                )
            changed = db.execute(
                deliveries.update()
                .where(which)
                .values(
                    state=state,
                    attempts=deliveries.c.attempts + 1,
                    last_error=error,
                    updated_at=now,
                    next_attempt_at=next_attempt_at if state == DeliveryState.PENDING else None,
                )
            ).rowcount
            if not changed:
                return
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

    # --- known sources (``cxr-node aet``) ------------------------------------------------------

    def list_sources(self) -> list[SourceRule]:
        """Sources managed at run time, in a stable order."""
        with self._begin() as db:
            rows = db.execute(sa.select(sources).order_by(sources.c.ae_title, sources.c.host))
            return [
                SourceRule(
                    ae_title=row.ae_title,
                    host=row.host or None,
                    destinations=json.loads(row.destinations or "[]"),
                )
                for row in rows
            ]

    def put_source(self, rule: SourceRule) -> bool:
        """Add a source, or replace the one with its AE title and host; True when it was new."""
        host = rule.host or ""
        with self._begin() as db:
            existed = db.execute(
                sources.delete().where(sources.c.ae_title == rule.ae_title, sources.c.host == host)
            ).rowcount
            db.execute(
                sources.insert().values(
                    ae_title=rule.ae_title,
                    host=host,
                    destinations=json.dumps(rule.destinations),
                    updated_at=time.time(),
                )
            )
            verb = "replaced" if existed else "added"
            db.execute(
                changes.insert().values(
                    at=time.time(),
                    what=f"source {verb}: {rule.ae_title} host={host or '*'} "
                    f"destinations={','.join(rule.destinations) or '-'}",
                )
            )
        return not existed

    def remove_source(self, ae_title: str, host: str | None = None) -> bool:
        """Forget a source; False when there was none."""
        with self._begin() as db:
            removed = db.execute(
                sources.delete().where(
                    sources.c.ae_title == ae_title, sources.c.host == (host or "")
                )
            ).rowcount
            if removed:
                db.execute(
                    changes.insert().values(
                        at=time.time(), what=f"source removed: {ae_title} host={host or '*'}"
                    )
                )
        return bool(removed)

    def recent_changes(self, limit: int = 20) -> list[tuple[float, str]]:
        """The latest configuration changes made at run time, newest first."""
        with self._begin() as db:
            rows = db.execute(sa.select(changes).order_by(changes.c.id.desc()).limit(limit))
            return [(row.at, row.what) for row in rows]

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
        return {row.destination: self._delivery_row(row) for row in rows}

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
    def _delivery_row(row: Any) -> DeliveryRow:
        return DeliveryRow(
            study_key=row.study_key,
            destination=row.destination,
            state=DeliveryState(row.state),
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at if row.created_at is not None else row.updated_at,
            next_attempt_at=row.next_attempt_at,
        )

    @staticmethod
    def _study_row(row: Any) -> StudyRow:
        return StudyRow(
            study_key=row.study_key,
            study_uid=row.study_uid,
            state=StudyState(row.state),
            reason_code=row.reason_code,
            reason=row.reason,
            destinations=_destination_names(row.destinations),
            last_received_at=row.last_received_at,
            updated_at=row.updated_at,
            attempts=row.attempts,
            calling_ae=row.calling_ae,
            notice_state=row.notice_state,
            created_at=row.created_at,
        )
