"""Celery task: deliver every due result to one destination, over reused associations.

One task at a time per destination (a lease in the ledger), so a destination that is down or
slow holds up only its own deliveries, never another destination's, and never an analysis
(delivery workers are separate processes). A destination that cannot be reached backs off
exponentially; the schedule lives in the ledger, so it survives restarts. Permanent refusals
are recorded with their reason and not retried.
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from celery import shared_task

from cxr_node.destination_kinds import AnyDestination, DicomWebDestination, Hl7Destination
from cxr_node.heartbeat import Heartbeat
from cxr_node.ledger import DeliveryRow, DeliveryState
from cxr_node.logs import describe_exception, traceback_frames
from cxr_node.queue import DELIVER_TASK
from cxr_node.spool import log_ref
from workers.deliver import dicomweb, hl7
from workers.deliver.dicom import (
    AssociationRefused,
    DeliveryRejected,
    DestinationUnreachable,
    send_study,
)
from workers.deliver.policy import StudyDeferred
from workers.runtime import WorkerContext, context

log = logging.getLogger(__name__)

BATCH_SIZE = 20


def backoff_seconds(failures: int, initial: float, ceiling: float) -> float:
    """Exponential backoff after ``failures`` consecutive failures: initial, 2x, 4x ... ceiling."""
    exponent = min(max(failures - 1, 0), 40)  # 2**40 * initial is past any ceiling
    return float(min(initial * 2**exponent, ceiling))


DESTINATION_LEASE_SECONDS = 30.0
"""A destination's lease lasts this long unless its holder's heartbeat (every third of it)
renews it: a killed delivery worker's destination is taken over within it."""


def lease_seconds(ctx: WorkerContext) -> float:
    """How long a destination lease lasts without a heartbeat."""
    return DESTINATION_LEASE_SECONDS


@shared_task(name=DELIVER_TASK, acks_late=True)
def deliver_to(destination_name: str) -> None:
    """Send every due study's results to one destination, then schedule the next attempt."""
    ctx = context()
    destination = ctx.settings.destination(destination_name)
    token = ctx.ledger.acquire_destination(destination_name, lease_seconds(ctx))
    if token is None:
        return  # another task is delivering to it and will see our studies
    heartbeat = Heartbeat(
        f"destination-{destination_name}",
        lease_seconds(ctx) / 3,
        lambda: ctx.ledger.renew_destination(destination_name, token, lease_seconds(ctx)),
    )
    try:
        with heartbeat:
            if destination is None:
                _unconfigured(ctx, destination_name)
            else:
                _drain(ctx, destination, token)
    finally:
        ctx.ledger.release_destination(destination_name, token)
    next_at = ctx.ledger.next_delivery_at(destination_name)
    if next_at is not None:
        ctx.queue.submit_delivery(destination_name, countdown=max(0.0, next_at - time.time()))


def _drain(ctx: WorkerContext, destination: AnyDestination, token: str) -> None:
    """Deliver due studies until none is due, the destination fails, or the lease is lost."""
    while True:
        due = ctx.ledger.due_deliveries(destination.name, BATCH_SIZE)
        if not due:
            return
        for row in due:
            if not ctx.ledger.renew_destination(destination.name, token, lease_seconds(ctx)):
                log.warning("lease on %s lost; stopping this round", destination.name)
                return
            if not _deliver_study(ctx, destination, row):
                return


def _deliver_study(ctx: WorkerContext, destination: AnyDestination, row: DeliveryRow) -> bool:
    """One study to one destination; returns False when the destination is unusable now."""
    name, study = destination.name, row.study_key
    try:
        stored = _send_unsent(ctx, destination, row)
    except DestinationUnreachable as exc:
        _destination_down(ctx, name, row, str(exc))
        return False
    except AssociationRefused as exc:
        _give_up_destination(ctx, name, str(exc))
        return False
    except StudyDeferred as exc:
        _defer_study(ctx, name, row, str(exc))
        return True
    except DeliveryRejected as exc:
        ctx.ledger.note_destination_outcome(name, reachable=True)
        ctx.ledger.record_delivery(
            study, name, DeliveryState.FAILED, str(exc), opened_at=row.created_at
        )
        log.error("study %s: %s refused its results: %s", log_ref(study), name, exc)
        return True
    except (OSError, sa.exc.OperationalError) as exc:  # our disk or database, for a moment
        reason = f"delivery interrupted: {describe_exception(exc)}"
        retry_at = time.time() + ctx.settings.delivery_retry_initial_seconds
        ctx.ledger.record_delivery(
            study, name, DeliveryState.PENDING, reason, retry_at, opened_at=row.created_at
        )
        log.warning("study %s to %s: %s; retrying", log_ref(study), name, reason)
        return False
    except Exception as exc:  # a bug or a broken result file: permanent, but recorded
        reason = f"delivery failed: {describe_exception(exc)}"
        ctx.ledger.record_delivery(
            study, name, DeliveryState.FAILED, reason, opened_at=row.created_at
        )
        log.error("study %s to %s: %s\n%s", log_ref(study), name, reason, traceback_frames(exc))
        return True
    ctx.ledger.note_destination_outcome(name, reachable=True)
    ctx.ledger.record_delivery(study, name, DeliveryState.DELIVERED, opened_at=row.created_at)
    log.info("study %s: %d result objects delivered to %s", log_ref(study), stored, name)
    return True


def _send_unsent(ctx: WorkerContext, destination: AnyDestination, row: DeliveryRow) -> int:
    """Send the study's result files the destination has not acknowledged since the delivery
    was (re)opened, recording each acknowledgement in the ledger as it comes: a retry after a
    failure part-way (the destination went down after the SR, this worker was killed between
    two C-STOREs) sends only what is missing. Returns how many were sent now. An HL7
    destination gets one message per opening instead (:mod:`workers.deliver.hl7`)."""
    if isinstance(destination, Hl7Destination):
        return hl7.send_study(ctx, destination, row)
    unsent = {
        ctx.spool.resolve(result.path): result.sop_instance_uid
        for result in ctx.ledger.results_of(row.study_key)
        if result.sop_instance_uid not in row.sent_instances
    }
    if not unsent:
        return 0  # all acknowledged before a crash; only the outcome is left to record

    def acknowledged(sop_instance_uid: str) -> None:
        ctx.ledger.record_instance_sent(
            row.study_key, destination.name, sop_instance_uid, opened_at=row.created_at
        )

    if isinstance(destination, DicomWebDestination):
        return dicomweb.send_study(destination, unsent, acknowledged)
    return send_study(
        ctx.pool,
        destination,
        list(unsent),
        lambda path: acknowledged(unsent[path]),
    )


def _destination_down(ctx: WorkerContext, name: str, row: DeliveryRow, error: str) -> None:
    """Back off the whole destination; studies waiting longer than the limit fail."""
    settings = ctx.settings
    failures, down_since = ctx.ledger.note_destination_failure(name)
    wait = backoff_seconds(
        failures, settings.delivery_retry_initial_seconds, settings.delivery_retry_max_seconds
    )
    now = time.time()
    if now - down_since >= settings.delivery_give_up_after_seconds:
        # down longer than the limit: deliveries that have waited that long fail (a node that
        # was itself off for a weekend does not fail its backlog on the first timeout)
        reason = (
            f"gave up: {name} unreachable for over "
            f"{settings.delivery_give_up_after_seconds / 3600:g} h: {error}"
        )
        give_up_before = now - settings.delivery_give_up_after_seconds
        for waiting in ctx.ledger.due_deliveries(name, limit=10_000):
            if waiting.created_at < give_up_before:
                ctx.ledger.record_delivery(
                    waiting.study_key,
                    name,
                    DeliveryState.FAILED,
                    reason,
                    opened_at=waiting.created_at,
                )
    ctx.ledger.record_delivery(
        row.study_key, name, DeliveryState.PENDING, error, now + wait, opened_at=row.created_at
    )
    ctx.ledger.defer_destination(name, now + wait, error)
    log.warning(
        "%s unreachable (failure %d in a row): %s; next attempt in %.0f s",
        name,
        failures,
        error,
        wait,
    )


def _defer_study(ctx: WorkerContext, name: str, row: DeliveryRow, error: str) -> None:
    """This study (not the destination) again later, with its own backoff; failed once it has
    waited longer than the give-up limit. The destination goes on with the others."""
    settings = ctx.settings
    ctx.ledger.note_destination_outcome(name, reachable=True)
    now = time.time()
    if now - row.created_at >= settings.delivery_give_up_after_seconds:
        reason = f"gave up after {settings.delivery_give_up_after_seconds / 3600:g} h: {error}"
        ctx.ledger.record_delivery(
            row.study_key, name, DeliveryState.FAILED, reason, opened_at=row.created_at
        )
        log.error("study %s to %s: %s", log_ref(row.study_key), name, reason)
        return
    wait = backoff_seconds(
        row.attempts + 1,
        settings.delivery_retry_initial_seconds,
        settings.delivery_retry_max_seconds,
    )
    ctx.ledger.record_delivery(
        row.study_key, name, DeliveryState.PENDING, error, now + wait, opened_at=row.created_at
    )
    log.warning("study %s to %s: %s; again in %.0f s", log_ref(row.study_key), name, error, wait)


def _give_up_destination(ctx: WorkerContext, name: str, reason: str) -> None:
    """The destination refuses us for good: everything due to it fails with the reason."""
    ctx.ledger.note_destination_outcome(name, reachable=True)
    for row in ctx.ledger.due_deliveries(name, limit=10_000):
        ctx.ledger.record_delivery(
            row.study_key, name, DeliveryState.FAILED, reason, opened_at=row.created_at
        )
    log.error("%s: %s; its deliveries failed and are not retried", name, reason)


def _unconfigured(ctx: WorkerContext, name: str) -> None:
    """This worker's settings lack the destination: retried (another worker, or a corrected
    configuration, may know it) until the give-up limit, never dropped silently."""
    due = ctx.ledger.due_deliveries(name, limit=1)
    if due:
        _destination_down(ctx, name, due[0], f"destination {name} is not in this worker's settings")
