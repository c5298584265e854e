"""The study ledger: the single source of truth for where every study and instance is.

Every arrow of the data flow is a state change recorded here (through the one transition table
in :mod:`cxr_node.ledger.transitions`), so that after any crash the node resumes without losing
or duplicating work. SQLite by default; PostgreSQL for several machines. Split by concern:
schema and migrations, intake and assembly, claims, deliveries, sources, liveness, retention,
and the read model (queries, the worklist, metrics, validation and drift).
"""

from __future__ import annotations

from cxr_node.ledger.accounts import AccountsLedger
from cxr_node.ledger.claims import ClaimsLedger
from cxr_node.ledger.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock
from cxr_node.ledger.deliveries import DeliveriesLedger
from cxr_node.ledger.engine import LedgerUnavailable, masked
from cxr_node.ledger.intake import IntakeLedger
from cxr_node.ledger.liveness import LivenessLedger
from cxr_node.ledger.metrics import MetricsLedger
from cxr_node.ledger.queries import QueriesLedger
from cxr_node.ledger.retention import RetentionLedger
from cxr_node.ledger.rows import (
    DeliveryRow,
    FindingRow,
    InstanceRow,
    NoticeState,
    PatientConflictRow,
    PurgeCandidate,
    ResultRow,
    StudyAttributes,
    StudyRow,
    WorkerRow,
)
from cxr_node.ledger.sources import SourcesLedger
from cxr_node.ledger.transitions import DeliveryState, IllegalTransition, StudyState
from cxr_node.ledger.validation import (
    AnalysedStudyFindings,
    DriftRow,
    FindingFigures,
    FindingRate,
    ValidationLedger,
)
from cxr_node.ledger.worklist import WorklistEntry, WorklistFilter, WorklistLedger, WorklistPage


class Ledger(
    IntakeLedger,
    ClaimsLedger,
    DeliveriesLedger,
    SourcesLedger,
    LivenessLedger,
    RetentionLedger,
    QueriesLedger,
    AccountsLedger,
    WorklistLedger,
    MetricsLedger,
    ValidationLedger,
):
    """Records and answers where each study and instance is (one object, several parts)."""


__all__ = [
    "SYSTEM_CLOCK",
    "AnalysedStudyFindings",
    "Clock",
    "DeliveryRow",
    "DeliveryState",
    "DriftRow",
    "FindingFigures",
    "FindingRate",
    "FindingRow",
    "IllegalTransition",
    "InstanceRow",
    "Ledger",
    "LedgerUnavailable",
    "ManualClock",
    "NoticeState",
    "PatientConflictRow",
    "PurgeCandidate",
    "ResultRow",
    "StudyAttributes",
    "StudyRow",
    "StudyState",
    "SystemClock",
    "WorkerRow",
    "WorklistEntry",
    "WorklistFilter",
    "WorklistPage",
    "masked",
]
