"""A study's result to a RIS as an ORU^R01 over MLLP (HL7 v2.5.1; MLLP as in HL7 v2 Appendix C),
with python-hl7's MLLP framing and parser; TLS when the destination asks for it.

The message asks for the study's priority mapped by the destination's ``priority_map``, never
lower than the order's own priority (Requested Procedure Priority in the source header) nor than
any earlier message for the study (kept in the ledger). Acknowledgements (HL7 2.9 original
mode): AA/CA delivered; AE/CE (an error that may pass): this study again later, the others go
on; no answer, a closed connection or an unreadable answer: the destination is retried with
backoff; AR/CR: that study's delivery fails with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import hl7
from hl7.mllp import InvalidBlockError, open_hl7_connection
from pydicom import dcmread

from cxr_node.destination_kinds import Hl7Destination
from cxr_node.jobs import CodedConcept, ModelInfo
from cxr_node.ledger import DeliveryRow, FindingRow, StudyAttributes
from workers.deliver.policy import DeliveryRejected, DestinationUnreachable, StudyDeferred
from workers.encode import hl7 as oru
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)

T = TypeVar("T")

SENT_PREFIX = "hl7:"
"""How an acknowledged message is recorded among the delivery's sent instances."""


def findings_by_label(rows: Sequence[FindingRow]) -> list[oru.FindingResult]:
    """Per label, the image with the highest probability (as the worklist shows the study)."""
    best: dict[str, FindingRow] = {}
    for row in rows:
        if row.label not in best or row.probability > best[row.label].probability:
            best[row.label] = row
    return [
        oru.FindingResult(
            code=CodedConcept.model_validate(row.code),
            label=row.label,
            probability=row.probability,
            threshold=row.threshold,
            present=row.present,
        )
        for row in best.values()
    ]


def _order(ctx: WorkerContext, study_key: str) -> oru.OrderContext:
    """The order as the source header says it; the ledger's attributes when the files are gone."""
    for instance in ctx.ledger.instances_of(study_key):
        try:
            header = dcmread(ctx.spool.resolve(instance.path), stop_before_pixels=True)
        except Exception:  # purged or unreadable: try the next, then the ledger
            continue
        return oru.order_context(header)
    study = ctx.ledger.study(study_key)
    attributes = ctx.ledger.attributes_of(study_key) or StudyAttributes()
    return oru.order_from_attributes(attributes, study.study_uid if study is not None else "")


def _sender(destination: Hl7Destination) -> oru.Sender:
    return oru.Sender(
        destination.sending_application,
        destination.sending_facility,
        destination.receiving_application,
        destination.receiving_facility,
    )


def compose(
    ctx: WorkerContext, destination: Hl7Destination, row: DeliveryRow
) -> tuple[str, str | None] | None:
    """The message for the study and the priority it asks for (None for a not-analysed one);
    None when this destination takes no message for it."""
    study = ctx.ledger.study(row.study_key)
    if study is None:
        raise DeliveryRejected("the study is no longer in the ledger")
    order = _order(ctx, row.study_key)
    findings = ctx.ledger.findings_of(row.study_key)
    if study.priority is None or study.model is None:
        if not destination.not_analysed:
            return None
        message = oru.oru_not_analysed(
            sender=_sender(destination),
            order=order,
            reason_code=study.reason_code or "NOT_ANALYSED",
            reason=study.reason or "the study was not analysed",
        )
        return message, None
    priority = study.priority
    mapped = destination.priority_map.get(priority, "R")  # type: ignore[call-overload]
    earlier = ctx.ledger.sent_priorities(row.study_key)
    asked = oru.highest([mapped, order.order_priority, *earlier]) or mapped
    message = oru.oru_result(
        sender=_sender(destination),
        order=order,
        model=ModelInfo.model_validate(study.model),
        score=study.abnormality_score or 0.0,
        priority=priority,
        hl7_priority=asked,
        findings=findings_by_label(findings),
    )
    return message, asked


def _tls_context(destination: Hl7Destination) -> ssl.SSLContext | None:
    return destination.tls.client_context() if destination.tls is not None else None


async def _exchange(destination: Hl7Destination, message: str) -> hl7.Message:
    timeout = destination.timeout_seconds
    context = _tls_context(destination)
    reader, writer = await asyncio.wait_for(
        open_hl7_connection(
            destination.host,
            destination.port,
            encoding="utf-8",
            encoding_errors="replace",  # an acknowledgement in another charset is still read
            ssl=context,
            server_hostname=destination.host if context is not None else None,
        ),
        timeout,
    )
    try:
        writer.writemessage(hl7.parse(message))
        await asyncio.wait_for(writer.drain(), timeout)
        return await asyncio.wait_for(reader.readmessage(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2.0)


def run_within(coroutine: Coroutine[Any, Any, T], deadline: float) -> T:
    """Run ``coroutine`` on a fresh event loop for at most ``deadline`` seconds.

    Unlike ``asyncio.run``, which waits at its end for the loop's executor threads, this does
    not wait for a name lookup (``getaddrinfo`` runs in such a thread) that hangs past the
    deadline: that thread is left to finish on its own (Python joins it only when the process
    exits), and TimeoutError is raised on time. Tasks still pending are cancelled first."""
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hl7-lookup")
    loop.set_default_executor(executor)
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, deadline))
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            loop.close()


def send_message(destination: Hl7Destination, message: str) -> None:
    """Send one message and read its acknowledgement; raise as the delivery policy says."""
    control = oru.control_of(message)
    # connect, send and answer have their own limits; the close 2 s more; then a margin, so
    # that the whole never times out after the answer came (a resend would repeat the ORU)
    deadline = 3 * destination.timeout_seconds + 5.0
    try:
        ack = run_within(_exchange(destination, message), deadline)
    except TimeoutError:
        raise DestinationUnreachable("no HL7 acknowledgement in time") from None
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        raise DestinationUnreachable(f"MLLP connection failed ({type(exc).__name__})") from None
    except (InvalidBlockError, hl7.HL7Exception, ValueError, UnicodeError) as exc:
        raise DestinationUnreachable(f"unreadable acknowledgement ({type(exc).__name__})") from None
    try:
        msa = ack.segment("MSA")
    except KeyError:
        raise DestinationUnreachable("the answer has no MSA segment") from None
    if len(msa) < 3:
        raise DestinationUnreachable("the acknowledgement names no message (MSA-2)")
    code, acknowledged = str(msa[1]), str(msa[2])
    text = str(msa[3]) if len(msa) > 3 else ""
    if acknowledged != control:
        raise DestinationUnreachable(f"acknowledgement of another message ({acknowledged!r})")
    if code in ("AA", "CA"):
        return
    if code in ("AR", "CR"):
        raise DeliveryRejected(f"HL7 {code}: the RIS rejected the message {text}".rstrip())
    if code in ("AE", "CE"):  # an error that may pass: this message again later
        raise StudyDeferred(f"HL7 {code}: the RIS could not take it now {text}".rstrip())
    raise DestinationUnreachable(f"HL7 {code or 'answer without a code'} {text}".rstrip())


def send_study(ctx: WorkerContext, destination: Hl7Destination, row: DeliveryRow) -> int:
    """One study's ORU to the destination (once per opening of the delivery); returns how many
    messages were sent now (0 or 1)."""
    composed = compose(ctx, destination, row)
    if composed is None:
        return 0
    message, asked = composed
    control = oru.control_of(message)
    if SENT_PREFIX + control in row.sent_instances:
        return 0  # acknowledged before a crash; only the outcome is left to record
    if asked is not None:  # before sending: a RIS that took it but did not answer counts too
        ctx.ledger.record_sent_priority(row.study_key, destination.name, asked)
    send_message(destination, message)
    ctx.ledger.record_instance_sent(
        row.study_key, destination.name, SENT_PREFIX + control, opened_at=row.created_at
    )
    return 1
