"""The v0.1 ledger: every table as release 0.1 wrote it.

A database made before migrations existed (v0.1 or older, no ``alembic_version`` table) is
brought here too: tables it lacks are created, and nullable columns that older builds lacked
are added, as v0.1 itself did at start.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _tables() -> list[sa.Table]:
    meta = sa.MetaData()
    return [
        sa.Table(
            "studies",
            meta,
            sa.Column("study_key", sa.String(80), primary_key=True),
            sa.Column("study_uid", sa.String(64), nullable=False),
            sa.Column("state", sa.String(20), nullable=False),
            sa.Column("reason_code", sa.String(40)),
            sa.Column("reason", sa.Text),
            sa.Column("calling_ae", sa.String(16)),
            sa.Column("destinations", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("last_received_at", sa.Float, nullable=False),
            sa.Column("lease_until", sa.Float),
            sa.Column("claimed_at", sa.Float),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("notice_state", sa.String(20)),
        ),
        sa.Table(
            "instances",
            meta,
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
        ),
        sa.Table(
            "results",
            meta,
            sa.Column("study_key", sa.String(80), primary_key=True),
            sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
            sa.Column("source_sop_instance_uid", sa.String(64), nullable=False),
            sa.Column("kind", sa.String(10), nullable=False),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "deliveries",
            meta,
            sa.Column("study_key", sa.String(80), primary_key=True),
            sa.Column("destination", sa.String(120), primary_key=True),
            sa.Column("state", sa.String(20), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("last_error", sa.Text),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("created_at", sa.Float),
            sa.Column("next_attempt_at", sa.Float),
        ),
        sa.Table(
            "destination_leases",
            meta,
            sa.Column("destination", sa.String(120), primary_key=True),
            sa.Column("token", sa.String(40)),
            sa.Column("lease_until", sa.Float),
            sa.Column("failures", sa.Integer, nullable=False),
            sa.Column("retry_at", sa.Float),
            sa.Column("down_since", sa.Float),
        ),
        sa.Table(
            "sources",
            meta,
            sa.Column("ae_title", sa.String(16), primary_key=True),
            sa.Column("host", sa.String(64), primary_key=True),
            sa.Column("destinations", sa.Text, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        ),
        sa.Table(
            "changes",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("what", sa.Text, nullable=False),
        ),
        sa.Table(
            "events",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("study_key", sa.String(80), nullable=False, index=True),
            sa.Column("at", sa.Float, nullable=False),
            sa.Column("state", sa.String(20), nullable=False),
            sa.Column("detail", sa.Text),
        ),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    present_tables = set(inspector.get_table_names())
    for table in _tables():
        if table.name not in present_tables:
            table.create(bind)
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
            if (table.name, column.name) == ("studies", "notice_state"):
                # studies finished before notices existed do not get one now
                op.execute(
                    "UPDATE studies SET notice_state = 'impossible' "
                    "WHERE state IN ('not_eligible', 'failed')"
                )
            if (table.name, column.name) == ("deliveries", "created_at"):
                op.execute("UPDATE deliveries SET created_at = updated_at")


def downgrade() -> None:
    for table in reversed(_tables()):
        op.drop_table(table.name)
