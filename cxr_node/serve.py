"""``cxr-node serve``: the DICOM listener, study assembly, the web app, and (embedded) the local
worker."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from cxr_node.assembly import StudyAssembler
from cxr_node.demo import demo_mode
from cxr_node.destinations import Router
from cxr_node.dicom.handlers import StoreHandler
from cxr_node.dicom.scp import start_server
from cxr_node.dicom.sessions import SenderSessions
from cxr_node.embedded import WorkerSupervisor
from cxr_node.ledger import Ledger
from cxr_node.memory import limit_malloc_arenas, release_free_memory
from cxr_node.queue import JobQueue
from cxr_node.retention import PURGE_INTERVAL_SECONDS, Purger
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from cxr_node.uploads import Uploads
from cxr_node.web.server import WebServer, build_app, ensure_first_admin

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM; then stop listening, finish, and stop the worker."""
    limit_malloc_arenas()  # before any thread starts (see cxr_node.memory)
    spool = Spool(settings.spool_path)
    ledger = Ledger(settings.ledger)
    queue = JobQueue(settings)
    router = Router(
        settings.destinations,
        settings.sources,
        settings.default_destinations,
        managed_sources=ledger.list_sources,
        shadow_mode=settings.shadow_mode,
    )
    require_known = settings.require_known_sources
    if require_known is None:
        require_known = not demo_mode(settings.models_path)

    housekeeping = Housekeeping(
        spool, Purger(settings, ledger, spool), settings.spool_retention_hours
    )
    assembler = StudyAssembler(
        ledger,
        queue,
        settings.study_quiet_seconds,
        owns_all_workers=settings.embedded_queue,
        not_analysed_report=settings.not_analysed_report,
        housekeeping=housekeeping.run,
    )
    supervisors = (
        [
            WorkerSupervisor(settings, role, on_exit=assembler.worker_exited)
            for role in ("analysis", "delivery")
        ]
        if settings.embedded_queue
        else []
    )
    assembler.recover(at_start=True)  # before the workers start: it frees their old leases
    for supervisor in supervisors:
        supervisor.start()

    handler = StoreHandler(
        spool,
        ledger,
        router.destinations_for,
        min_free_bytes=settings.spool_min_free_bytes,
        max_instance_bytes=settings.max_instance_bytes,
        rules=settings.eligibility,
        sessions=SenderSessions(assembler.studies_complete)
        if settings.assemble_on_release
        else None,
        shadow=settings.shadow_mode,
    )
    gate = (
        (lambda ae, address: router.known_source(ae, address) is not None)
        if require_known
        else None
    )
    server = start_server(settings, handler, gate)
    web = _start_web(settings, ledger, spool, queue, server)
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
    if settings.shadow_mode:
        log.warning(
            "shadow mode: studies are analysed and recorded; results go only to %s",
            ", ".join(d.name for d in settings.destinations if d.shadow)
            or "no destination (none is marked shadow)",
        )
    if require_known:
        log.info("only known sources may send (%d known)", len(router.sources()))
    else:
        log.warning("any calling AE title may send (require_known_sources is off)")
    try:
        assembler.run(stop)
    finally:
        server.shutdown()
        if web is not None:
            web.stop()
        for supervisor in supervisors:
            supervisor.stop()
        ledger.close()
        log.info("stopped")


def _start_web(
    settings: Settings, ledger: Ledger, spool: Spool, queue: JobQueue, server: Any
) -> WebServer | None:
    """The web app in a thread (``http_port`` 0: none). A port it cannot bind is logged as an
    error and the DICOM listener goes on: receiving images matters more than the pages."""
    if not settings.http_port:
        return None

    def listener() -> str | None:
        return None if server.socket.fileno() != -1 else "the DICOM listener is closed"

    def broker() -> str | None:
        try:
            queue.check_broker(timeout=2.0)
        except Exception as exc:
            return f"broker unreachable ({type(exc).__name__})"
        return None

    def spool_space() -> str | None:
        free = spool.free_bytes()
        if free < settings.spool_min_free_bytes:
            return f"spool has {free} bytes free, under spool_min_free_bytes"
        return None

    ensure_first_admin(settings, ledger)
    app = build_app(
        settings,
        ledger,
        readiness={"dicom_listener": listener, "broker": broker, "spool": spool_space},
    )
    app.state.queue = queue  # uploads for analysis go on serve's own queue
    web = WebServer(settings, app)
    try:
        web.start()
    except OSError as exc:
        log.error("web app not started on port %d: %s", settings.http_port, exc)
        return None
    log.info("web app on %s (worklist, API at /api/v1, docs at /api/docs)", web.url)
    return web


PARTIAL_FILES_KEPT_SECONDS = 3600.0
"""A temp file this old in the spool is left by an aborted association or a crashed writer."""


class Housekeeping:
    """Partial files left by interrupted transfers, and spool retention, once a minute."""

    def __init__(self, spool: Spool, purger: Purger, retention_hours: float) -> None:
        self._spool = spool
        self._purger = purger
        self._last = 0.0
        retention = retention_hours * 3600.0
        self._interval = (
            PURGE_INTERVAL_SECONDS
            if retention <= 0
            else max(1.0, min(PURGE_INTERVAL_SECONDS, retention / 2))
        )

    def run(self) -> None:
        """Called by the assembler's recovery round; does the work at most once a minute (or
        twice per retention period, when that is shorter)."""
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        release_free_memory()  # freed pages of the last minute's bursts back to the system
        expired = Uploads(self._spool).sweep()
        if expired:
            log.info("removed %d file(s) uploaded for analysis a day ago or more", expired)
        removed = self._spool.remove_stale_partials(PARTIAL_FILES_KEPT_SECONDS)
        if removed:
            log.info("removed %d partial file(s) left by interrupted transfers", removed)
        report = self._purger.purge()
        if report.studies:
            log.info(
                "spool retention: purged %d finished stud%s, %d bytes",
                len(report.studies),
                "y" if len(report.studies) == 1 else "ies",
                report.bytes,
            )
