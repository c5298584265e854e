"""What the ledger knows, for people and scripts: ``cxr-node studies``, ``status``,
``conflicts``, ``purge`` and ``db upgrade``.

Study keys and UIDs are shown; patient and study attributes (names, IDs, birth dates, accession
numbers) are kept in their own table and shown only when asked for (``status --patient``).
Patient conflicts hold no patient data at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cxr_node.ledger import Ledger, PatientConflictRow, StudyRow
from cxr_node.ledger.engine import head_revision, masked
from cxr_node.settings import Settings
from cxr_node.spool import Spool, safe_key


def _when(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float) -> float:
    """``--since``: a duration back from ``now`` (``90s``, ``30m``, ``24h``, ``7d``, ``2w``) or an
    ISO 8601 date or date and time (UTC unless it names its offset), as epoch seconds."""
    value = text.strip()
    match = _DURATION.fullmatch(value.lower())
    if match:
        return now - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a duration (30m, 24h, 7d) or an ISO 8601 date or time: {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _printable(value: str | None) -> str:
    """A value for a terminal: ``-`` when missing, control characters escaped."""
    if not value:
        return "-"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in value)


def conflict_summary(row: PatientConflictRow) -> dict[str, Any]:
    """A refused instance as JSON-ready data (no patient data: UIDs, AE title, time, reason)."""
    return {
        "at": _when(row.at),
        "calling_ae": row.calling_ae,
        "colliding_uid": row.known_as,
        "study_key": row.study_key,
        "study_uid": row.study_uid,
        "sop_instance_uid": row.sop_instance_uid,
        "reason_code": row.reason_code,
    }


def study_summary(ledger: Ledger, row: StudyRow) -> dict[str, Any]:
    """A study as JSON-ready data: state, reason, times, deliveries."""
    return {
        "study_key": row.study_key,
        "study_uid": row.study_uid,
        "state": row.state.value,
        "reason_code": row.reason_code,
        "reason": row.reason,
        "calling_ae": row.calling_ae,
        "received_at": _when(row.created_at),
        "last_received_at": _when(row.last_received_at),
        "queued_at": _when(row.queued_at),
        "analysed_at": _when(row.analysed_at),
        "delivered_at": _when(row.delivered_at),
        "finished_at": _when(row.finished_at),
        "purged_at": _when(row.purged_at),
        "updated_at": _when(row.updated_at),
        "analysis_attempts": row.attempts,
        "patient_conflicts": ledger.patient_conflict_counts([row.study_key]).get(row.study_key, 0),
        "abnormality_score": row.abnormality_score,
        "priority": row.priority,
        "model": row.model,
        "findings": [asdict(f) for f in ledger.findings_of(row.study_key)],
        "deliveries": {
            name: {
                "state": d.state.value,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "next_attempt_at": _when(d.next_attempt_at),
            }
            for name, d in ledger.deliveries_of(row.study_key).items()
        },
    }


def print_studies(settings: Settings, last: int, *, as_json: bool) -> int:
    """The ``last`` most recently updated studies."""
    ledger = Ledger(settings.ledger)
    try:
        rows = ledger.list_studies(last)
        if as_json:
            print(json.dumps([study_summary(ledger, row) for row in rows], indent=2))
            return 0
        conflicts = ledger.patient_conflict_counts([row.study_key for row in rows])
        for row in rows:
            reason = f"  {row.reason_code}: {row.reason}" if row.reason_code else ""
            when = _when(row.updated_at)
            count = conflicts.get(row.study_key, 0)
            refused = f"  patient conflicts: {count}" if count else ""
            print(f"{when}  {row.study_uid}  {row.state.value}{reason}{refused}")
        return 0
    finally:
        ledger.close()


def print_status(
    settings: Settings, study_uid: str, *, as_json: bool, patient: bool = False
) -> int:
    """Everything about one study; exit code 1 when the ledger does not know it. With
    ``patient``, its patient and study attributes too."""
    ledger = Ledger(settings.ledger)
    try:
        key = safe_key(study_uid.strip())
        row = ledger.study(key)
        if row is None:
            print(f"unknown study: {study_uid}")
            return 1
        summary = study_summary(ledger, row)
        summary["instances"] = [
            {
                "sop_instance_uid": i.sop_instance_uid,
                "sop_class_uid": i.sop_class_uid,
                "eligible": i.eligible,
                "reason_code": i.reason_code,
                "reason": i.reason,
            }
            for i in ledger.instances_of(key)
        ]
        summary["results"] = [
            {"sop_instance_uid": r.sop_instance_uid, "kind": r.kind} for r in ledger.results_of(key)
        ]
        summary["conflicts"] = [
            conflict_summary(c) for c in ledger.patient_conflicts(study_key=key)
        ]
        if patient:
            attributes = ledger.attributes_of(key)
            summary["attributes"] = asdict(attributes) if attributes else None
        summary["history"] = [
            {"at": _when(at), "state": state, "detail": detail}
            for at, state, detail in ledger.events_of(key)
        ]
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            _print_text(summary)
        return 0
    finally:
        ledger.close()


def _print_text(summary: dict[str, Any]) -> None:
    reason = f" ({summary['reason_code']}: {summary['reason']})" if summary["reason_code"] else ""
    print(f"study {summary['study_uid']}: {summary['state']}{reason}")
    print(
        f"  from {summary['calling_ae']}, received {summary['received_at']}, "
        f"updated {summary['updated_at']}"
    )
    if summary["conflicts"]:
        print(
            f"  PATIENT_CONFLICT: {len(summary['conflicts'])} instance(s) of another patient "
            "refused (cxr-node conflicts)"
        )
    for conflict in summary["conflicts"]:
        if conflict["colliding_uid"] is None:
            print(f"  conflict {conflict['at']}  an instance refused (sender and UIDs not kept)")
            continue
        print(
            f"  conflict {conflict['at']}  from {_printable(conflict['calling_ae'])}: "
            f"SOP Instance {_printable(conflict['sop_instance_uid'])} refused, its "
            f"{conflict['colliding_uid']} UID known for another patient"
        )
    if summary["priority"] is not None:
        model = summary["model"] or {}
        demo = " (DEMO model: not trained, no clinical meaning)" if model.get("demo") else ""
        print(
            f"  priority {summary['priority']}, abnormality score "
            f"{summary['abnormality_score']:.3f}, model {model.get('name')} "
            f"{model.get('version')}{demo}"
        )
    for finding in summary["findings"]:
        verdict = "present" if finding["present"] else "absent"
        print(
            f"  finding {finding['label']}: {finding['probability']:.3f} "
            f"(threshold {finding['threshold']:.3f}) {verdict}"
        )
    if summary.get("attributes"):
        for name, value in summary["attributes"].items():
            if value:
                print(f"  {name.replace('_', ' ')}: {value}")
    for item in summary["instances"]:
        verdict = "analysed" if item["eligible"] else f"not analysed: {item['reason_code']}"
        print(f"  image {item['sop_instance_uid']}  {verdict}")
    for item in summary["results"]:
        print(f"  result {item['kind']} {item['sop_instance_uid']}")
    for name, d in summary["deliveries"].items():
        error = f"  last error: {d['last_error']}" if d["last_error"] else ""
        print(f"  delivery to {name}: {d['state']} after {d['attempts']} attempt(s){error}")
    for event in summary["history"]:
        print(f"  {event['at']}  {event['state']}  {event['detail'] or ''}")


_CONFLICT_COLUMNS = (
    "TIME",
    "CALLING AE",
    "COLLIDING UID",
    "KNOWN STUDY",
    "REFUSED SOP INSTANCE",
    "REASON",
)


def print_conflicts(settings: Settings, *, since: float | None, last: int, as_json: bool) -> int:
    """``cxr-node conflicts``: instances refused because their Study or SOP Instance UID is known
    here for another patient, newest first (the ``last`` newest, those at or after ``since``).
    No patient data is kept for them, so none is shown."""
    ledger = Ledger(settings.ledger)
    try:
        rows = ledger.patient_conflicts(since=since, limit=max(last, 0) + 1)
    finally:
        ledger.close()
    shown = rows[: max(last, 0)]
    if as_json:
        print(json.dumps([conflict_summary(row) for row in shown], indent=2))
        return 0
    if not shown:
        print("no patient conflicts" + (f" since {_when(since)}" if since is not None else ""))
        return 0
    table = [
        [
            _when(row.at) or "-",
            _printable(row.calling_ae),
            row.known_as or "unknown",
            _printable(row.study_uid or row.study_key),
            _printable(row.sop_instance_uid),
            row.reason_code,
        ]
        for row in shown
    ]
    widths = [max(len(line[i]) for line in [list(_CONFLICT_COLUMNS), *table]) for i in range(6)]
    for line in [list(_CONFLICT_COLUMNS), *table]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
    if len(rows) > len(shown):
        print(f"(the newest {len(shown)}; --last N shows more)")
    return 0


def request_reprocess(settings: Settings, study_uid: str) -> int:
    """Ask a running node to analyse a study again (its results are sent again)."""
    ledger = Ledger(settings.ledger)
    try:
        key = safe_key(study_uid.strip())
        if ledger.study(key) is None:
            print(f"unknown study: {study_uid}")
            return 1
        previous = ledger.reprocess(key)
        if previous is None:
            print(f"study {study_uid} is being analysed now; try again when it is done")
            return 1
        print(f"study {study_uid} ({previous.value}) will be analysed again")
        return 0
    finally:
        ledger.close()


def run_purge(settings: Settings, *, dry_run: bool) -> int:
    """``cxr-node purge``: apply spool retention now (or say what it would delete)."""
    from cxr_node.retention import Purger

    ledger = Ledger(settings.ledger)
    try:
        report = Purger(settings, ledger, Spool(settings.spool_path)).purge(dry_run=dry_run)
    finally:
        ledger.close()
    verb = "would purge" if dry_run else "purged"
    for study in report.studies:
        print(
            f"{verb} {study.study_uid}  finished {_when(study.finished_at)}  "
            f"{study.files} file(s)  {study.bytes} bytes  ({study.why})"
        )
    print(f"{verb} {len(report.studies)} stud(ies), {report.bytes} bytes")
    return 0


def run_db_upgrade(settings: Settings) -> int:
    """``cxr-node db upgrade``: migrate the ledger (under the migration lock) to this release."""
    ledger = Ledger(settings.ledger)  # opening it upgrades it
    ledger.close()
    print(f"ledger {masked(settings.ledger)} is at schema {head_revision()}")
    return 0
