"""Celery tasks: analyse a study, then deliver its results. Errors decide retry or failure.

A permanent problem (undecodable pixels, a destination that rejects us) is recorded with its
reason and never retried; a transient one (destination down, timeout) backs off exponentially.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from pydicom import dcmread

from cxr_node.dicom.scu import DeliveryRejected, send_files
from cxr_node.errors import RejectedInput, TransientError
from cxr_node.jobs import InferenceJob
from cxr_node.ledger import DeliveryState, ResultRow
from cxr_node.queue import ANALYZE_TASK, DELIVER_TASK
from cxr_node.settings import parse_destination
from cxr_node.spool import log_ref
from workers.results import encode_results, to_bytes
from workers.runtime import context

log = logging.getLogger(__name__)

ANALYSIS_LEASE_SECONDS = 600.0
MAX_DELIVERY_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 300.0


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff: 2, 4, 8 ... seconds, at most five minutes."""
    return float(min(2 ** max(attempt, 1), MAX_BACKOFF_SECONDS))


@shared_task(name=ANALYZE_TASK, bind=True, acks_late=True)
def analyze_study(self: Task, job_payload: dict[str, Any]) -> None:
    """Analyse every eligible image of a study, write SR + SC, then ask for delivery."""
    job = InferenceJob.model_validate(job_payload)
    ctx = context()
    ref = log_ref(job.study_key)
    if not ctx.ledger.claim(job.study_key, ANALYSIS_LEASE_SECONDS):
        log.info("study %s already taken or done; skipping duplicate job", ref)
        return
    produced: list[ResultRow] = []
    refusals: list[RejectedInput] = []
    try:
        # The ledger, not the message, says which images the study has now.
        for relative in ctx.ledger.eligible_paths(job.study_key):
            try:
                produced.extend(_analyse_instance(relative))
            except RejectedInput as exc:
                log.warning("study %s: image not analysed: %s", ref, exc.reason_code)
                refusals.append(exc)
    except Exception as exc:
        ctx.ledger.mark_failed(job.study_key, "INTERNAL_ERROR", type(exc).__name__)
        log.exception("study %s failed with an internal error", ref)
        return
    if not produced:
        first = refusals[0] if refusals else RejectedInput("NO_IMAGES", "no image to analyse")
        ctx.ledger.mark_failed(job.study_key, first.reason_code, first.reason)
        log.info("study %s failed: %s", ref, first.reason_code)
        return
    ctx.ledger.record_results(job.study_key, produced, job.destinations)
    log.info("study %s analysed: %d result objects", ref, len(produced))
    if job.destinations:
        ctx.queue.submit_delivery(job.study_key)


def _analyse_instance(relative_path: str) -> list[ResultRow]:
    ctx = context()
    try:
        source = dcmread(ctx.spool.resolve(relative_path))
    except Exception as exc:
        raise RejectedInput("UNREADABLE", f"file cannot be parsed ({type(exc).__name__})") from None
    analysed = ctx.analyzer.analyse(source)
    rows = []
    for kind, dataset in encode_results(source, analysed):
        path = ctx.spool.result_path(str(source.StudyInstanceUID), str(dataset.SOPInstanceUID))
        ctx.spool.write_atomically(path, [to_bytes(dataset)])
        rows.append(
            ResultRow(
                sop_instance_uid=str(dataset.SOPInstanceUID),
                source_sop_instance_uid=str(source.SOPInstanceUID),
                kind=kind,
                path=ctx.spool.relative(path),
            )
        )
    return rows


@shared_task(name=DELIVER_TASK, bind=True, acks_late=True, max_retries=None)
def deliver_results(self: Task, study_key: str) -> None:
    """Send a study's results to each pending destination; retry only the transient failures."""
    ctx = context()
    files = [ctx.spool.resolve(row.path) for row in ctx.ledger.results_of(study_key)]
    deliveries = ctx.ledger.deliveries_of(study_key)
    retry_in: float | None = None
    for destination_text in ctx.ledger.pending_deliveries(study_key):
        destination = parse_destination(destination_text)
        attempts = deliveries[destination_text][1] + 1
        try:
            send_files(destination, files, ctx.settings.ae_title)
        except DeliveryRejected as exc:
            ctx.ledger.record_delivery(study_key, destination_text, DeliveryState.FAILED, str(exc))
            log.error("delivery to %s rejected: %s", destination.ae_title, exc)
            continue
        except TransientError as exc:
            final = attempts >= MAX_DELIVERY_ATTEMPTS
            state = DeliveryState.FAILED if final else DeliveryState.PENDING
            ctx.ledger.record_delivery(study_key, destination_text, state, str(exc))
            log.warning(
                "delivery to %s failed (attempt %d): %s", destination.ae_title, attempts, exc
            )
            if not final:
                wait = backoff_seconds(attempts)
                retry_in = wait if retry_in is None else min(retry_in, wait)
            continue
        ctx.ledger.record_delivery(study_key, destination_text, DeliveryState.DELIVERED)
    if retry_in is not None:
        ctx.queue.submit_delivery(study_key, countdown=retry_in)
