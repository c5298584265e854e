"""The ledger's connection, clock and transaction helper, shared by its parts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from cxr_node.ledger import engine as engines
from cxr_node.ledger.clock import SYSTEM_CLOCK, Clock


class LedgerBase:
    """Opens the database (upgrading its schema under the migration lock) and holds the clock."""

    def __init__(self, url: str, *, clock: Clock = SYSTEM_CLOCK, migrate: bool = True) -> None:
        self.url = url
        self.clock = clock
        self._engine = engines.create_engine(url)
        if migrate:
            engines.upgrade(self._engine, url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql`` (SQLAlchemy's dialect name)."""
        return str(self._engine.dialect.name)

    def now(self) -> float:
        """The ledger's time (epoch seconds)."""
        return self.clock.now()

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._engine.begin() as connection:
            yield connection
