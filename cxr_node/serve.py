"""``cxr-node serve``: the DICOM listener, study assembly, and (embedded) the local worker."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from cxr_node.assembly import StudyAssembler
from cxr_node.destinations import Router
from cxr_node.dicom.handlers import StoreHandler
from cxr_node.dicom.scp import start_server
from cxr_node.embedded import WorkerSupervisor
from cxr_node.ledger import Ledger
from cxr_node.queue import JobQueue
from cxr_node.settings import Settings
from cxr_node.spool import Spool

log = logging.getLogger(__name__)

MIN_FREE_SPOOL_BYTES = 512 * 1024 * 1024


def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM; then stop listening, finish, and stop the worker."""
    spool = Spool(settings.spool_path)
    ledger = Ledger(settings.ledger)
    queue = JobQueue(settings)
    router = Router(settings.destinations, settings.sources, settings.default_destinations)

    supervisors = (
        [WorkerSupervisor(settings, role) for role in ("analysis", "delivery")]
        if settings.embedded_queue
        else []
    )
    for supervisor in supervisors:
        supervisor.start()
    assembler = StudyAssembler(
        ledger,
        queue,
        settings.study_quiet_seconds,
        owns_all_workers=settings.embedded_queue,
        not_analysed_report=settings.not_analysed_report,
    )
    assembler.recover(at_start=True)

    handler = StoreHandler(
        spool, ledger, router.destinations_for, min_free_bytes=MIN_FREE_SPOOL_BYTES
    )
    server = start_server(settings, handler)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    mode = "embedded queue" if settings.embedded_queue else "external broker"
    log.info(
        "listening as %s on %s:%d (%s); results go to %s",
        settings.ae_title,
        settings.bind_address,
        settings.port,
        mode,
        ", ".join(f"{d.name} ({d})" for d in settings.destinations) or "no destination",
    )
    try:
        assembler.run(stop)
    finally:
        server.shutdown()
        for supervisor in supervisors:
            supervisor.stop()
        ledger.close()
        log.info("stopped")
