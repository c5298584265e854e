"""Celery task: analyse a study, write its SR + SC, then hand it to delivery.

A permanent problem (undecodable pixels) is recorded with its reason and never retried (and,
when configured, a "not analysed" SR says so); a transient one (disk full, database busy)
backs off. Log lines carry exception types and places, never their messages (which may quote header
values).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from celery import Task, shared_task

from cxr_node.errors import RejectedInput, TransientError
from cxr_node.heartbeat import Heartbeat
from cxr_node.jobs import ImageAnalysis, InferenceJob
from cxr_node.ledger import ResultRow
from cxr_node.logs import describe_exception, traceback_frames
from cxr_node.queue import ANALYZE_TASK
from cxr_node.spool import log_ref
from workers import pipeline
from workers.runtime import WorkerContext, context

log = logging.getLogger(__name__)

ANALYSIS_LEASE_SECONDS = 30.0
"""An analysis claim lasts this long unless its heartbeat renews it (every third of it): a
killed worker's study is taken over within it, a long analysis never while its worker lives."""
MAX_ANALYSIS_ATTEMPTS = 3
TRANSIENT_ANALYSIS_RETRY_SECONDS = 30.0

TRANSIENT_ANALYSIS_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    OSError,  # disk full or a shared volume gone while writing results
    sa.exc.OperationalError,  # database locked or unreachable
    MemoryError,
)


@shared_task(name=ANALYZE_TASK, bind=True, acks_late=True)
def analyze_study(self: Task, job_payload: dict[str, Any]) -> None:
    """Analyse every eligible image of a study, write SR + SC, then ask for delivery."""
    job = InferenceJob.model_validate(job_payload)
    ctx = context()
    ref = log_ref(job.study_key)
    token = ctx.ledger.claim(
        job.study_key, ANALYSIS_LEASE_SECONDS, MAX_ANALYSIS_ATTEMPTS, worker_id=ctx.worker_id
    )
    if token is None:
        log.info("study %s already taken, done or out of attempts; skipping this job", ref)
        return
    heartbeat = Heartbeat(
        f"claim-{ref}",
        ANALYSIS_LEASE_SECONDS / 3,
        lambda: ctx.ledger.renew_claim(job.study_key, token, ANALYSIS_LEASE_SECONDS),
    )
    with heartbeat:
        _analyse_claimed(ctx, job, token)


def _analyse_claimed(ctx: WorkerContext, job: InferenceJob, token: int) -> None:
    """Analyse a study this worker holds the claim of, and record the outcome."""
    ref = log_ref(job.study_key)
    try:
        produced, analyses, refusals = _analyse_study(ctx, job.study_key)
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
        if ctx.ledger.mark_failed(job.study_key, "INTERNAL_ERROR", type(exc).__name__, token):
            _ask_for_notice(ctx, job.study_key)
        # the traceback's frames, not its message (which may quote header values)
        log.error(
            "study %s failed with an internal error: %s",
            ref,
            traceback_frames(exc),
        )
        return
    if not produced:
        first = refusals[0] if refusals else RejectedInput("NO_IMAGES", "no image to analyse")
        if ctx.ledger.mark_failed(job.study_key, first.reason_code, first.reason, token):
            _ask_for_notice(ctx, job.study_key)
        log.info("study %s failed: %s", ref, first.reason_code)
        return
    if not ctx.ledger.record_results(
        job.study_key, produced, job.destinations, token, analyses=analyses
    ):
        log.warning("study %s: lease lost to another worker; results not recorded", ref)
        return
    log.info("study %s analysed: %d result objects", ref, len(produced))
    for destination in job.destinations:
        ctx.queue.submit_delivery(destination)


def _ask_for_notice(ctx: WorkerContext, study_key: str) -> None:
    """A study failed: its "not analysed" SR is written by a delivery worker (if configured)."""
    if ctx.settings.not_analysed_report:
        ctx.queue.submit_notice(study_key)


def _analyse_study(
    ctx: WorkerContext, study_key: str
) -> tuple[list[ResultRow], list[ImageAnalysis], list[RejectedInput]]:
    produced: list[ResultRow] = []
    analyses: list[ImageAnalysis] = []
    refusals: list[RejectedInput] = []
    # The ledger, not the message, says which images the study has now.
    for relative in ctx.ledger.eligible_paths(study_key):
        try:
            rows, analysis = _analyse_instance(ctx, relative)
        except RejectedInput as exc:
            log.warning("study %s: image not analysed: %s", log_ref(study_key), exc.reason_code)
            refusals.append(exc)
            continue
        produced.extend(rows)
        analyses.append(analysis)
    return produced, analyses, refusals


def _analyse_instance(
    ctx: WorkerContext, relative_path: str
) -> tuple[list[ResultRow], ImageAnalysis]:
    try:
        path = ctx.spool.resolve(relative_path)
    except ValueError as exc:  # a ledger path outside the spool: this image is refused
        raise RejectedInput("UNREADABLE", f"file cannot be parsed ({type(exc).__name__})") from None
    work = pipeline.run(ctx.pipeline, path)
    if work.analysed is None:
        raise RuntimeError("the analysis pipeline ended without an analysis")
    return work.rows, work.analysed.analysis
