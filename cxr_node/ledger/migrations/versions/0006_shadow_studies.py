"""Studies received in shadow mode (``shadow_mode``) are marked: analysed and recorded like any
other, their results sent only to destinations marked ``shadow``. Null for studies received
before this revision (not shadow).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("shadow", sa.Boolean()))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("shadow")
