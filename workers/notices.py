"""Celery task: write the "not analysed" SR of a study and open its deliveries.

Runs on a delivery worker (no models needed). Idempotent: the notice's UIDs are stable and the
ledger records it once, so a re-sent task changes nothing.
"""

from __future__ import annotations

import logging

from celery import shared_task
from pydicom import Dataset, dcmread

from cxr_node.ledger import ResultRow, StudyState
from cxr_node.logs import traceback_frames
from cxr_node.queue import NOTICE_TASK
from cxr_node.spool import log_ref
from workers.results import encode_notice, to_bytes
from workers.runtime import WorkerContext, context

log = logging.getLogger(__name__)

_NOT_ANALYSED = {StudyState.NOT_ELIGIBLE, StudyState.FAILED}


@shared_task(name=NOTICE_TASK, acks_late=True)
def report_not_analysed(study_key: str) -> None:
    """Write the notice SR for a study that was not analysed, then ask for its delivery."""
    ctx = context()
    study = ctx.ledger.study(study_key)
    if (
        not ctx.settings.not_analysed_report
        or study is None
        or study.state not in _NOT_ANALYSED
        or study.notice_state is not None
        or study.reason_code == "DELIVERY_FAILED"
    ):
        return
    ref = log_ref(study_key)
    headers = _readable_headers(ctx, study_key)
    if not headers:
        ctx.ledger.mark_notice_impossible(study_key, "no readable instance")
        log.warning("study %s: no readable instance, no not-analysed notice", ref)
        return
    try:
        notice = encode_notice(headers, study.reason_code or "UNKNOWN", study.reason or "")
    except Exception as exc:  # highdicom refuses these headers: record it, do not loop
        ctx.ledger.mark_notice_impossible(study_key, type(exc).__name__)
        log.error("study %s: notice cannot be encoded: %s", ref, traceback_frames(exc))
        return
    path = ctx.spool.result_path(str(notice.StudyInstanceUID), str(notice.SOPInstanceUID))
    ctx.spool.write_atomically(path, [to_bytes(notice)])
    row = ResultRow(
        sop_instance_uid=str(notice.SOPInstanceUID),
        source_sop_instance_uid=str(headers[0].SOPInstanceUID),
        kind="notice",
        path=ctx.spool.relative(path),
    )
    if ctx.ledger.record_notice(study_key, row):
        log.info("study %s: not-analysed notice written (%s)", ref, study.reason_code)
        for destination in study.destinations:
            ctx.queue.submit_delivery(destination)


def _readable_headers(ctx: WorkerContext, study_key: str) -> list[Dataset]:
    headers: list[Dataset] = []
    for instance in ctx.ledger.instances_of(study_key):
        try:
            headers.append(dcmread(ctx.spool.resolve(instance.path), stop_before_pixels=True))
        except Exception as exc:
            reason = type(exc).__name__
            log.info("study %s: instance header unreadable (%s)", log_ref(study_key), reason)
    return headers
