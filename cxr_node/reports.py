"""What the ledger knows, for people and scripts: ``cxr-node studies`` and ``cxr-node status``.

Study keys and UIDs are shown; patient names, IDs, birth dates and accession numbers are not in
the ledger at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cxr_node.ledger import Ledger, StudyRow
from cxr_node.settings import Settings
from cxr_node.spool import safe_key


def _when(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


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
        "updated_at": _when(row.updated_at),
        "analysis_attempts": row.attempts,
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
        for row in rows:
            reason = f"  {row.reason_code}: {row.reason}" if row.reason_code else ""
            when = _when(row.updated_at)
            print(f"{when}  {row.study_uid}  {row.state.value}{reason}")
        return 0
    finally:
        ledger.close()


def print_status(settings: Settings, study_uid: str, *, as_json: bool) -> int:
    """Everything about one study; exit code 1 when the ledger does not know it."""
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
