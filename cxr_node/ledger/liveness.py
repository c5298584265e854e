"""Worker processes announce themselves and beat: a worker that stops beating is gone, and
the jobs it had taken from the queue are sent again."""

from __future__ import annotations

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.rows import WorkerRow
from cxr_node.ledger.schema import workers


class LivenessLedger(LedgerBase):
    """The ``workers`` table."""

    def worker_heartbeat(self, worker_id: str, role: str, hostname: str, pid: int) -> None:
        """This worker is alive (called at start and every few seconds)."""
        now = self.now()
        with self._begin() as db:
            updated = db.execute(
                workers.update().where(workers.c.worker_id == worker_id).values(heartbeat_at=now)
            ).rowcount
            if not updated:
                db.execute(
                    workers.insert().values(
                        worker_id=worker_id,
                        role=role,
                        hostname=hostname,
                        pid=pid,
                        started_at=now,
                        heartbeat_at=now,
                    )
                )

    def worker_stopped(self, worker_id: str) -> None:
        """This worker is shutting down cleanly."""
        with self._begin() as db:
            db.execute(workers.delete().where(workers.c.worker_id == worker_id))

    def list_workers(self) -> list[WorkerRow]:
        """Known workers, most recent heartbeat first."""
        with self._begin() as db:
            rows = db.execute(sa.select(workers).order_by(workers.c.heartbeat_at.desc())).all()
        return [
            WorkerRow(
                worker_id=row.worker_id,
                role=row.role,
                hostname=row.hostname,
                pid=row.pid,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
            )
            for row in rows
        ]

    def forget_silent_workers(self, silent_seconds: float) -> int:
        """Remove workers silent this long (they are gone); returns how many."""
        with self._begin() as db:
            return int(
                db.execute(
                    workers.delete().where(workers.c.heartbeat_at < self.now() - silent_seconds)
                ).rowcount
            )
