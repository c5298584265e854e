"""Connecting to the ledger's database and bringing its schema up to date, once, under a lock.

SQLite (the default: WAL, full sync, a busy timeout) or PostgreSQL (``postgresql+psycopg://``,
``pip install "cxr-node[postgres]"``); any other SQLAlchemy URL may work but is not tested.
Migrations (Alembic, ``migrations/``) run under an exclusive lock: a file lock beside a SQLite
file, an advisory lock on PostgreSQL. So several processes starting at once never race: the
first upgrades, the others find the schema current.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine, make_url

from cxr_node.errors import CxrNodeError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 0x63787201  # an arbitrary, fixed advisory lock key ("cxr\x01")


class LedgerUnavailable(CxrNodeError):
    """The ledger's database cannot be used (no driver, unreachable, refused)."""


def masked(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print and log)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable ledger URL)"


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL, or None for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def create_engine(url: str) -> Engine:
    """An engine for the ledger; LedgerUnavailable (one line, password masked) if it cannot be."""
    try:
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _sqlite_engine(url)
        return sa.create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        hint = ' (pip install "cxr-node[postgres]")' if "psycopg" in str(exc) else ""
        raise LedgerUnavailable(
            f"ledger {masked(url)}: database driver missing: {exc.name}{hint}"
        ) from None
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
        raise LedgerUnavailable(
            f"ledger {masked(url)}: not a usable database URL ({exc})"
        ) from None


def _sqlite_engine(url: str) -> Engine:
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


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration this release knows."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The database's migration (None: made before migrations, or empty)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, url: str) -> bool:
    """Bring the schema to the newest migration under the migration lock; True if it changed."""
    head = head_revision()
    try:
        with _migration_lock(engine, url) as connection:
            before = current_revision(connection)
            if before == head:
                return False
            log.info("ledger schema: upgrading from %s to %s", before or "v0.1 or new", head)
            command.upgrade(_config(connection), "head")
            connection.commit()
            return True
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise LedgerUnavailable(f"ledger {masked(url)}: cannot connect ({reason})") from None


@contextmanager
def _migration_lock(engine: Engine, url: str) -> Iterator[Connection]:
    """A connection held under the exclusive migration lock."""
    path = sqlite_path(url)
    if path is not None:
        with open(path.with_name(path.name + ".migrate.lock"), "a+") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                with engine.connect() as connection:
                    yield connection
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        return
    with engine.connect() as connection:
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            connection.execute(
                sa.text("SELECT pg_advisory_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
            )
            connection.commit()
        try:
            yield connection
        finally:
            if postgres:
                connection.rollback()
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
                connection.commit()
