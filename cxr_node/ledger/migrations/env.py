"""Alembic environment: migrations run on the connection the ledger hands over (under its lock)."""

from __future__ import annotations

from alembic import context

from cxr_node.ledger.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
