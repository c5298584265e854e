"""Patient conflicts for operators: one row per instance refused because its Study or SOP
Instance UID is known here for another patient (no patient data: when, from which calling AE,
which UID, the known study). Conflicts recorded before (event rows only) are copied in, with
what they did not say left empty.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INDEX = "ix_patient_conflicts_study_key"


def upgrade() -> None:
    op.create_table(
        "patient_conflicts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_key", sa.String(80), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("known_as", sa.String(20)),
        sa.Column("reason_code", sa.String(40), nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("sop_instance_uid", sa.String(64)),
    )
    op.create_index(_INDEX, "patient_conflicts", ["study_key"])
    op.execute(
        "INSERT INTO patient_conflicts (study_key, at, reason_code) "
        "SELECT study_key, at, 'PATIENT_CONFLICT' FROM events "
        "WHERE detail = 'PATIENT_CONFLICT: instance refused' ORDER BY id"
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="patient_conflicts")
    op.drop_table("patient_conflicts")
