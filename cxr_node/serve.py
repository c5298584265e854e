"""``cxr-node serve``: the DICOM listener, study assembly, and (embedded) the local worker."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from cxr_node.assembly import StudyAssembler
from cxr_node.dicom.handlers import StoreHandler
from cxr_node.dicom.scp import start_server
from cxr_node.embedded import WorkerSupervisor
from cxr_node.jobs import Destination
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
    destinations = list(settings.destinations)

    def route(_calling_ae: str) -> list[Destination]:
        return destinations

    supervisor = WorkerSupervisor(settings) if settings.embedded_queue else None
    if supervisor is not None:
        supervisor.start()
    assembler = StudyAssembler(
        ledger, queue, settings.study_quiet_seconds, owns_all_workers=settings.embedded_queue
    )
    assembler.recover(at_start=True)

    handler = StoreHandler(spool, ledger, route, min_free_bytes=MIN_FREE_SPOOL_BYTES)
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
        ", ".join(str(d) for d in destinations) or "no destination",
    )
    try:
        assembler.run(stop)
    finally:
        server.shutdown()
        if supervisor is not None:
            supervisor.stop()
        ledger.close()
        log.info("stopped")
