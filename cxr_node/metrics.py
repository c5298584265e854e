"""Counters of this process's DICOM edge, for ``/metrics`` (Prometheus). Labels carry statuses
only, never patient data, UIDs or AE titles of patients' devices."""

from __future__ import annotations

from prometheus_client import Counter

INSTANCES_RECEIVED = Counter(
    "cxr_instances_received",
    "C-STORE requests answered by this serve process, by DIMSE status (PS3.4 Annex B)",
    ["status"],
)


def count_store(code: int) -> None:
    """One C-STORE answered with ``code``."""
    INSTANCES_RECEIVED.labels(status=f"0x{code:04X}").inc()
