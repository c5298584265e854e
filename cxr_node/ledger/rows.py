"""What the ledger answers: plain, frozen rows (the read model builds on these)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cxr_node.ledger.transitions import DeliveryState, StudyState


class NoticeState(StrEnum):
    """Whether the "not analysed" SR of a study was written (or cannot be)."""

    WRITTEN = "written"
    IMPOSSIBLE = "impossible"


@dataclass(frozen=True)
class StudyRow:
    """A study as the ledger holds it."""

    study_key: str
    study_uid: str
    state: StudyState
    reason_code: str | None
    reason: str | None
    destinations: list[str]
    last_received_at: float
    updated_at: float
    attempts: int
    calling_ae: str | None = None
    notice_state: str | None = None
    created_at: float = 0.0
    queued_at: float | None = None
    analysed_at: float | None = None
    delivered_at: float | None = None
    finished_at: float | None = None
    purged_at: float | None = None
    abnormality_score: float | None = None
    priority: str | None = None
    model: dict[str, Any] | None = None
    reserved_by: str | None = None
    claimed_by: str | None = None
    shadow: bool = False
    """Received in shadow mode: analysed and recorded, results only to shadow destinations."""


@dataclass(frozen=True)
class InstanceRow:
    """An instance as the ledger holds it."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str
    eligible: bool
    reason_code: str | None
    reason: str | None


@dataclass(frozen=True)
class ResultRow:
    """A result object written for a study."""

    sop_instance_uid: str
    source_sop_instance_uid: str
    kind: str
    path: str


@dataclass(frozen=True)
class DeliveryRow:
    """The delivery of one study's results to one destination."""

    study_key: str
    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    created_at: float
    next_attempt_at: float | None
    sent_instances: frozenset[str] = frozenset()
    """SOP Instance UIDs the destination acknowledged since the delivery was (re)opened."""


@dataclass(frozen=True)
class FindingRow:
    """What the model said about one label in one image."""

    sop_instance_uid: str
    label: str
    code: dict[str, str]
    probability: float
    threshold: float
    present: bool
    region: dict[str, float] | None = None


@dataclass(frozen=True)
class StudyAttributes:
    """Patient and study attributes a worklist shows (PS3.3 C.7.1.1, C.7.2.1, C.8.11).

    Patient data: stored for authorised views, never logged, never in metrics.
    """

    patient_name: str | None = None
    patient_id: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    issuer_of_patient_id: str | None = None
    placer_order_number: str | None = None
    filler_order_number: str | None = None
    requested_procedure_priority: str | None = None
    requested_procedure_description: str | None = None
    requested_procedure_code_json: str | None = None
    """The order (PS3.3 C.4.10 Request Attributes, C.7.3.1): what an HL7 result message needs
    once the source files are gone (since 0008); the code as JSON (value, scheme, meaning)."""

    def __repr__(self) -> str:
        return "StudyAttributes(<patient data not shown>)"


@dataclass(frozen=True)
class WorkerRow:
    """A worker process and its last heartbeat."""

    worker_id: str
    role: str
    hostname: str
    pid: int
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True)
class PurgeCandidate:
    """A finished study whose spooled files may be deleted."""

    study_key: str
    study_uid: str
    finished_at: float
    paths: list[str] = field(default_factory=list)


def destination_names(payload: str | None) -> list[str]:
    """Destination names stored with a study (a ledger written before names held mappings)."""
    items = json.loads(payload or "[]")
    return [str(item["ae_title"]) if isinstance(item, dict) else str(item) for item in items]


def study_row(row: Any) -> StudyRow:
    """A StudyRow from a ``studies`` row."""
    return StudyRow(
        study_key=row.study_key,
        study_uid=row.study_uid,
        state=StudyState(row.state),
        reason_code=row.reason_code,
        reason=row.reason,
        destinations=destination_names(row.destinations),
        last_received_at=row.last_received_at,
        updated_at=row.updated_at,
        attempts=row.attempts,
        calling_ae=row.calling_ae,
        notice_state=row.notice_state,
        created_at=row.created_at,
        queued_at=row.queued_at,
        analysed_at=row.analysed_at,
        delivered_at=row.delivered_at,
        finished_at=row.finished_at,
        purged_at=row.purged_at,
        abnormality_score=row.abnormality_score,
        priority=row.priority,
        model=json.loads(row.model_json) if row.model_json else None,
        reserved_by=row.reserved_by,
        claimed_by=row.claimed_by,
        shadow=bool(row.shadow),
    )


def delivery_row(row: Any) -> DeliveryRow:
    """A DeliveryRow from a ``deliveries`` row."""
    return DeliveryRow(
        study_key=row.study_key,
        destination=row.destination,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=row.created_at if row.created_at is not None else row.updated_at,
        next_attempt_at=row.next_attempt_at,
        sent_instances=frozenset(json.loads(row.sent_instances or "[]")),
    )


PATIENT_CONFLICT = "PATIENT_CONFLICT"
"""Reason code: an instance refused because its UIDs are known here for another patient."""


@dataclass(frozen=True)
class PatientConflict:
    """``record_instance`` refused an instance: its Study Instance UID (``known_as`` "Study
    Instance") or its SOP Instance UID ("SOP Instance") is known for another patient. Nothing
    was replaced or merged; ``study_key`` is the known study, which holds the event row."""

    study_key: str
    known_as: str
    reason_code: str = PATIENT_CONFLICT


@dataclass(frozen=True)
class PatientConflictRow:
    """One refused instance as the ledger recorded it (no patient data): when, the calling AE
    title, which of its UIDs was known for another patient (``known_as``), the known study and
    the refused SOP Instance UID. None where a conflict recorded before 0003 did not say."""

    at: float
    study_key: str
    study_uid: str | None
    known_as: str | None
    reason_code: str
    calling_ae: str | None
    sop_instance_uid: str | None
