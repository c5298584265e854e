"""The ledger's tables at the current migration (head); Alembic migrations beside it.

The migrations in ``migrations/versions`` are the authority on how a database gets here; this
module describes the result, for the queries. A test checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("reason_code", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("calling_ae", sa.String(16)),
    sa.Column("destinations", sa.Text, nullable=False, default="[]"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_received_at", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float),
    sa.Column("claimed_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("notice_state", sa.String(20)),
    # since 0002: times, the claim's holder, the analysis summary, retention
    sa.Column("queued_at", sa.Float),
    sa.Column("analysed_at", sa.Float),
    sa.Column("delivered_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("purged_at", sa.Float),
    sa.Column("reserved_by", sa.String(200)),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("abnormality_score", sa.Float),
    sa.Column("priority", sa.String(20)),
    sa.Column("model_name", sa.Text),
    sa.Column("model_version", sa.Text),
    sa.Column("model_demo", sa.Boolean),
    sa.Column("model_json", sa.Text),
    # since 0006: received in shadow mode (results only to destinations marked shadow)
    sa.Column("shadow", sa.Boolean),
)

instances = sa.Table(
    "instances",
    metadata,
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
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
    sa.Column("source_sop_instance_uid", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("study_key", sa.String(80), primary_key=True),
    sa.Column("destination", sa.String(120), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float),
    sa.Column("next_attempt_at", sa.Float),
    # JSON list of the SOP Instance UIDs the destination acknowledged since the delivery was
    # (re)opened (since 0004): a retry sends only the others
    sa.Column("sent_instances", sa.Text),
    sa.Column("sent_priority", sa.String(4)),  # since 0007: the last HL7 message's priority
)

destination_leases = sa.Table(
    "destination_leases",
    metadata,
    sa.Column("destination", sa.String(120), primary_key=True),
    sa.Column("token", sa.String(40)),
    sa.Column("lease_until", sa.Float),
    sa.Column("failures", sa.Integer, nullable=False, default=0),
    sa.Column("retry_at", sa.Float),
    sa.Column("down_since", sa.Float),
)

sources = sa.Table(
    "sources",
    metadata,
    sa.Column("ae_title", sa.String(16), primary_key=True),
    sa.Column("host", sa.String(64), primary_key=True, default=""),
    sa.Column("destinations", sa.Text, nullable=False, default="[]"),
    sa.Column("updated_at", sa.Float, nullable=False),
)

changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("what", sa.Text, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_key", sa.String(80), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("from_state", sa.String(20)),  # since 0002
)

findings = sa.Table(
    "findings",
    metadata,
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
"""Per image and label, what the model said (since 0002)."""

study_attributes = sa.Table(
    "study_attributes",
    metadata,
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
    sa.Column("issuer_of_patient_id", sa.Text),
    sa.Column("placer_order_number", sa.Text),
    sa.Column("filler_order_number", sa.Text),
    sa.Column("requested_procedure_priority", sa.Text),
    sa.Column("requested_procedure_description", sa.Text),
    sa.Column("requested_procedure_code_json", sa.Text),
)
"""Patient and study attributes a worklist shows (since 0002), and the order's (since 0008).
Never logged, never in metrics."""

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(200), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)
"""Live worker processes and their heartbeats (since 0002): a silent worker is gone."""

patient_conflicts = sa.Table(
    "patient_conflicts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_key", sa.String(80), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("known_as", sa.String(20)),
    sa.Column("reason_code", sa.String(40), nullable=False),
    sa.Column("calling_ae", sa.String(16)),
    sa.Column("sop_instance_uid", sa.String(64)),
)
"""Instances refused for another patient (since 0003): per refusal, the known study (which also
holds a ``PATIENT_CONFLICT`` event row), which UID of the instance is known here for another
patient (``known_as``: "Study Instance" or "SOP Instance"), the calling AE title and the refused
SOP Instance UID. No patient data: the refused instance's patient values are never kept. Rows
copied from older event rows lack ``known_as``, ``calling_ae`` and ``sop_instance_uid``."""


# --- people and machines who use the web app and the API (since 0005) -------------------------

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),  # argon2id (PHC string)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("password_changed_at", sa.Float, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("token_id", sa.String(16), nullable=False, unique=True),  # public part
    sa.Column("secret_hash", sa.String(64), nullable=False),  # sha256 of the secret part
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float),
    sa.Column("revoked_at", sa.Float),
)

web_sessions = sa.Table(
    "web_sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),  # sha256 of the cookie value
    sa.Column("user_name", sa.String(64), nullable=False, index=True),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(80), nullable=False),  # user:NAME, token:NAME, cli
    sa.Column("action", sa.String(40), nullable=False),
    sa.Column("study_key", sa.String(80), index=True),
    sa.Column("detail", sa.Text),
)
