"""Known sources (``cxr-node aet``) and the log of run-time configuration changes."""

from __future__ import annotations

import json

import sqlalchemy as sa

from cxr_node.destinations import SourceRule
from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.schema import changes, sources


class SourcesLedger(LedgerBase):
    """Calling AE titles managed at run time, and who changed what."""

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
                    updated_at=self.now(),
                )
            )
            verb = "replaced" if existed else "added"
            db.execute(
                changes.insert().values(
                    at=self.now(),
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
                        at=self.now(), what=f"source removed: {ae_title} host={host or '*'}"
                    )
                )
        return bool(removed)

    def recent_changes(self, limit: int = 20) -> list[tuple[float, str]]:
        """The latest configuration changes made at run time, newest first."""
        with self._begin() as db:
            rows = db.execute(sa.select(changes).order_by(changes.c.id.desc()).limit(limit))
            return [(row.at, row.what) for row in rows]
