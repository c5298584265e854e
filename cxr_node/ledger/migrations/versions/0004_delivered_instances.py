"""Deliveries remember which result instances the destination has acknowledged in the current
opening of the delivery, so that a retry after a failure part-way through a study (the
destination went down after the SR, the delivery worker was killed between two C-STOREs) sends
only what is missing instead of the study again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("sent_instances", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_instances")
