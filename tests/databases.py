"""Ledger databases for tests: a SQLite file, or a fresh PostgreSQL database per test.

PostgreSQL is the server this machine runs (``CXR_TEST_POSTGRES_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``); each test creates its own database
and drops it afterwards. Where none can be reached, the PostgreSQL variants are skipped with a
loud reason (and a summary line at the end of the run).
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SKIPPED_REASON = "NO POSTGRESQL: {url} cannot be reached ({error}); PostgreSQL tests SKIPPED"


def admin_url() -> str:
    """The maintenance database URL tests create their databases from."""
    return os.environ.get("CXR_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@cache
def postgres_problem() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per run)."""
    try:
        engine = sa.create_engine(admin_url(), connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return SKIPPED_REASON.format(url=admin_url(), error=type(exc).__name__)
    return None


_dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-test-database")
atexit.register(_dropper.shutdown, wait=True)


def _drop(name: str) -> None:
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; its URL. Dropped afterwards (connections closed)."""
    problem = postgres_problem()
    if problem:
        pytest.skip(problem)
    name = f"cxr_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    try:
        yield make_url(admin_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        _dropper.submit(_drop, name)  # dropping takes most of a second: not on the test's time
