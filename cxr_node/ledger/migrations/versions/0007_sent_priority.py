"""Deliveries by HL7 remember the priority their last message asked for, across reopenings of
the delivery (a reanalysis, a resend), so that no later message for the study asks for a lower
one (the never-lower rule of triage).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("sent_priority", sa.String(4)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sent_priority")
