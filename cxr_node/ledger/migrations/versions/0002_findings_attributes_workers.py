"""What a worklist needs: analysis summary and findings per study, patient and study
attributes, the times of each stage, worker heartbeats, and retention.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_STUDY_COLUMNS: list[tuple[str, Any]] = [
    ("queued_at", sa.Float()),
    ("analysed_at", sa.Float()),
    ("delivered_at", sa.Float()),
    ("finished_at", sa.Float()),
    ("purged_at", sa.Float()),
    ("reserved_by", sa.String(200)),
    ("claimed_by", sa.String(200)),
    ("abnormality_score", sa.Float()),
    ("priority", sa.String(20)),
    ("model_name", sa.Text()),
    ("model_version", sa.Text()),
    ("model_demo", sa.Boolean()),
    ("model_json", sa.Text()),
]


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for name, kind in _STUDY_COLUMNS:
            batch.add_column(sa.Column(name, kind))
        # several reason codes joined with commas outgrow 40 characters
        batch.alter_column("reason_code", type_=sa.Text, existing_type=sa.String(40))
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("from_state", sa.String(20)))
    # A study already at rest was finished when it last changed.
    op.execute(
        "UPDATE studies SET finished_at = updated_at "
        "WHERE state IN ('delivered', 'not_eligible', 'failed') "
        "OR (state = 'analysed' AND destinations = '[]')"
    )
    op.execute("UPDATE studies SET queued_at = updated_at WHERE state = 'queued'")
    op.create_table(
        "findings",
        sa.Column("study_key", sa.String(80), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(64), primary_key=True),
        sa.Column("code_value", sa.Text, nullable=False),
        sa.Column("code_scheme", sa.Text, nullable=False),
        sa.Column("code_meaning", sa.Text, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("region_json", sa.Text),
    )
    op.create_table(
        "study_attributes",
        sa.Column("study_key", sa.String(80), primary_key=True),
        sa.Column("patient_name", sa.Text),
        sa.Column("patient_id", sa.Text),
        sa.Column("patient_sex", sa.Text),
        sa.Column("patient_birth_date", sa.Text),
        sa.Column("accession_number", sa.Text),
        sa.Column("study_date", sa.Text),
        sa.Column("study_time", sa.Text),
        sa.Column("study_description", sa.Text),
        sa.Column("modality", sa.Text),
        sa.Column("body_part", sa.Text),
        sa.Column("view_position", sa.Text),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(200), primary_key=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("study_attributes")
    op.drop_table("findings")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("from_state")
    with op.batch_alter_table("studies") as batch:
        batch.alter_column("reason_code", type_=sa.String(40), existing_type=sa.Text)
        for name, _kind in reversed(_STUDY_COLUMNS):
            batch.drop_column(name)
