"""Celery tasks: analyse a study, then deliver its results. Errors decide retry or failure.

A permanent problem (undecodable pixels, a destination that rejects us) is recorded with its
reason and never retried; a transient one (destination down, disk full, database busy) backs
off. Log lines carry exception types and places, never their messages (which may quote header
values).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Task, shared_task
from pydicom import dcmread

from cxr_node.dicom.scu import DeliveryRejected, send_files
from cxr_node.errors import RejectedInput, TransientError
from cxr_node.jobs import Destination, InferenceJob
from cxr_node.ledger import DeliveryState, ResultRow
from cxr_node.logs import describe_exception
from cxr_node.queue import ANALYZE_TASK, DELIVER_TASK
from cxr_node.settings import parse_destination
from cxr_node.spool import log_ref
from workers.results import encode_results, to_bytes
from workers.runtime import WorkerContext, context

log = logging.getLogger(__name__)

ANALYSIS_LEASE_SECONDS = 600.0
MAX_ANALYSIS_ATTEMPTS = 3
TRANSIENT_ANALYSIS_RETRY_SECONDS = 30.0
MAX_DELIVERY_ATTEMPTS = 12
MAX_BACKOFF_SECONDS = 300.0

TRANSIENT_ANALYSIS_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,  # disk full or a shared volume gone while writing results
    sa.exc.OperationalError,  # database locked or unreachable
    MemoryError,
)


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff: 2, 4, 8 ... seconds, at most five minutes."""
    return float(min(2 ** max(attempt, 1), MAX_BACKOFF_SECONDS))


@shared_task(name=ANALYZE_TASK, bind=True, acks_late=True)
def analyze_study(self: Task, job_payload: dict[str, Any]) -> None:
    """Analyse every eligible image of a study, write SR + SC, then ask for delivery."""
    job = InferenceJob.model_validate(job_payload)
    ctx = context()
    ref = log_ref(job.study_key)
    token = ctx.ledger.claim(job.study_key, ANALYSIS_LEASE_SECONDS, MAX_ANALYSIS_ATTEMPTS)
    if token is None:
        log.info("study %s already taken, done or out of attempts; skipping this job", ref)
        return
    try:
        produced, refusals = _analyse_study(ctx, job.study_key)
    except TRANSIENT_ANALYSIS_ERRORS as exc:
        log.warning(
            "study %s: transient %s; retrying in %.0f s",
            ref,
            describe_exception(exc),
            TRANSIENT_ANALYSIS_RETRY_SECONDS,
        )
        if ctx.ledger.release(job.study_key, token):
            ctx.queue.submit_analysis(job, countdown=TRANSIENT_ANALYSIS_RETRY_SECONDS)
        return
    except Exception as exc:
        ctx.ledger.mark_failed(job.study_key, "INTERNAL_ERROR", type(exc).__name__, token)
        log.error("study %s failed with an internal error: %s", ref, describe_exception(exc))
        return
    if not produced:
        first = refusals[0] if refusals else RejectedInput("NO_IMAGES", "no image to analyse")
        ctx.ledger.mark_failed(job.study_key, first.reason_code, first.reason, token)
        log.info("study %s failed: %s", ref, first.reason_code)
        return
    if not ctx.ledger.record_results(job.study_key, produced, job.destinations, token):
        log.warning("study %s: lease lost to another worker; results not recorded", ref)
        return
    log.info("study %s analysed: %d result objects", ref, len(produced))
    if job.destinations:
        ctx.queue.submit_delivery(job.study_key)


def _analyse_study(
    ctx: WorkerContext, study_key: str
) -> tuple[list[ResultRow], list[RejectedInput]]:
    produced: list[ResultRow] = []
    refusals: list[RejectedInput] = []
    # The ledger, not the message, says which images the study has now.
    for relative in ctx.ledger.eligible_paths(study_key):
        try:
            produced.extend(_analyse_instance(ctx, relative))
        except RejectedInput as exc:
            log.warning("study %s: image not analysed: %s", log_ref(study_key), exc.reason_code)
            refusals.append(exc)
    return produced, refusals


def _analyse_instance(ctx: WorkerContext, relative_path: str) -> list[ResultRow]:
    try:
        source = dcmread(ctx.spool.resolve(relative_path))
    except FileNotFoundError:
        raise RejectedInput("SPOOL_FILE_MISSING", "the spooled file is gone") from None
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
    """Send a study's results to each pending destination; retry only the transient failures.

    Each destination is tried independently: one failing (in any way) never stops the others.
    """
    ctx = context()
    files = [ctx.spool.resolve(row.path) for row in ctx.ledger.results_of(study_key)]
    retry_in: float | None = None
    for destination_text, (state, attempts, _error) in ctx.ledger.deliveries_of(study_key).items():
        if state != DeliveryState.PENDING:
            continue
        wait = _deliver_one(ctx, study_key, destination_text, files, attempts + 1)
        if wait is not None:
            retry_in = wait if retry_in is None else min(retry_in, wait)
    if retry_in is not None:
        ctx.queue.submit_delivery(study_key, countdown=retry_in)


def _deliver_one(
    ctx: WorkerContext, study_key: str, destination_text: str, files: list[Path], attempts: int
) -> float | None:
    """One destination, one attempt; returns seconds until the next attempt, or None."""
    try:
        destination: Destination = parse_destination(destination_text)
        send_files(destination, files, ctx.settings.ae_title)
    except TransientError as exc:
        final = attempts >= MAX_DELIVERY_ATTEMPTS
        state = DeliveryState.FAILED if final else DeliveryState.PENDING
        ctx.ledger.record_delivery(study_key, destination_text, state, str(exc))
        log.warning("delivery to %s failed (attempt %d): %s", destination_text, attempts, exc)
        return None if final else backoff_seconds(attempts)
    except DeliveryRejected as exc:
        ctx.ledger.record_delivery(study_key, destination_text, DeliveryState.FAILED, str(exc))
        log.error("delivery to %s rejected: %s", destination_text, exc)
        return None
    except Exception as exc:  # a bug or a broken result file: permanent, but recorded
        reason = f"delivery failed: {describe_exception(exc)}"
        ctx.ledger.record_delivery(study_key, destination_text, DeliveryState.FAILED, reason)
        log.error("delivery to %s: %s", destination_text, reason)
        return None
    ctx.ledger.record_delivery(study_key, destination_text, DeliveryState.DELIVERED)
    return None
