"""The order's attributes kept with the study's, each from the first image that has it (issuer
of the patient ID, placer and filler order numbers, requested procedure priority, description
and code), so that an HL7 result sent after retention purged the source files still names its
order and keeps its priority.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

COLUMNS = (
    "issuer_of_patient_id",
    "placer_order_number",
    "filler_order_number",
    "requested_procedure_priority",
    "requested_procedure_description",
    "requested_procedure_code_json",
)


def upgrade() -> None:
    with op.batch_alter_table("study_attributes") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("study_attributes") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
