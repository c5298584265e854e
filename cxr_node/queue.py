"""The Celery side of the edge: one task path for the embedded queue and for Redis.

Without a broker URL the embedded queue is Kombu's file-system transport under
``<data_dir>/queue`` (no server needed), writing each message whole
(:mod:`cxr_node.embedded_transport`). It is not the durability guarantee by itself: the ledger
is, and :mod:`cxr_node.assembly` re-sends any job that a crash may have lost. Task names are
strings so that this module never imports the worker code (or torch).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from cxr_node.jobs import InferenceJob
from cxr_node.logs import describe_exception
from cxr_node.settings import Settings

log = logging.getLogger(__name__)

PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.1, "interval_step": 0.4}
"""A message that cannot be published in about a second is left to the ledger's re-send."""
BROKER_DOWN_LOG_EVERY_SECONDS = 30.0

ANALYZE_TASK = "cxr_node.analyze_study"
DELIVER_TASK = "cxr_node.deliver_to"
NOTICE_TASK = "cxr_node.report_not_analysed"
UPLOAD_TASK = "cxr_node.analyze_upload"
EMBEDDED_TRANSPORT = "cxr_node.embedded_transport:Transport"
"""Kombu's file-system transport, writing each message whole (see that module)."""
ANALYSIS_QUEUE = "analysis"
DELIVERY_QUEUE = "delivery"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings; the worker registers its tasks on it."""
    if settings.broker_url is not None:
        broker = settings.broker_url.get_secret_value()
        transport_options: dict[str, object] = {"visibility_timeout": 3600}
        if broker.startswith(("redis://", "rediss://")):
            from cxr_node.compat import install_kombu_redis_reconnect_guard

            install_kombu_redis_reconnect_guard()
    else:
        folder = settings.queue_dir.resolve()
        (folder / "messages").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        broker = "filesystem://localhost//"
        transport_options = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "polling_interval": 0.05,
        }
    app = Celery("cxr_node", broker=broker, set_as_current=True)
    if settings.broker_url is None:
        app.conf.broker_transport = EMBEDDED_TRANSPORT
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,  # workers reconnect for as long as it takes
        broker_connection_timeout=5,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_routes={
            ANALYZE_TASK: {"queue": ANALYSIS_QUEUE},
            UPLOAD_TASK: {"queue": ANALYSIS_QUEUE},
            DELIVER_TASK: {"queue": DELIVERY_QUEUE},
            NOTICE_TASK: {"queue": DELIVERY_QUEUE},
        },
        task_default_queue=ANALYSIS_QUEUE,
        enable_utc=True,
    )
    return app


class JobQueue:
    """What the edge (and a worker handing on) puts on the queue.

    A message that cannot be published (the broker is down) is not an error for the caller:
    the ledger already says what is to be done, and the sweep in :mod:`cxr_node.assembly`
    sends it again once the broker is back. Each ``submit_*`` returns whether it was sent.
    """

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)
        self._down_logged_at = 0.0
        self._lock = threading.Lock()

    def submit_analysis(self, job: InferenceJob, countdown: float = 0.0) -> bool:
        """Hand one study to the analysis workers (after ``countdown`` seconds)."""
        return self._send(ANALYZE_TASK, [job.model_dump(mode="json")], ANALYSIS_QUEUE, countdown)

    def submit_delivery(self, destination: str, countdown: float = 0.0) -> bool:
        """Ask a delivery worker to send every due result to one destination (by name)."""
        return self._send(DELIVER_TASK, [destination], DELIVERY_QUEUE, countdown)

    def submit_notice(self, study_key: str) -> bool:
        """Ask a delivery worker to write (and send) the "not analysed" SR of a study."""
        return self._send(NOTICE_TASK, [study_key], DELIVERY_QUEUE, 0.0)

    def submit_upload(self, upload_id: str) -> bool:
        """Ask an analysis worker to analyse an uploaded file (``POST /api/v1/analyze``)."""
        return self._send(UPLOAD_TASK, [upload_id], ANALYSIS_QUEUE, 0.0)

    def _send(self, task: str, args: list[Any], queue: str, countdown: float) -> bool:
        try:
            self.app.send_task(
                task,
                args=args,
                queue=queue,
                countdown=countdown or None,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:  # kombu's OperationalError and the socket errors under it
            self._broker_down(exc)
            return False
        return True

    def _broker_down(self, exc: BaseException) -> None:
        """Log (at most every 30 s) that messages wait in the ledger for the broker."""
        with self._lock:
            now = time.monotonic()
            if now - self._down_logged_at < BROKER_DOWN_LOG_EVERY_SECONDS:
                return
            self._down_logged_at = now
        log.warning(
            "broker unreachable (%s): jobs wait in the ledger and are sent when it is back",
            describe_exception(exc),
        )

    def analysis_backlog(self) -> int | None:
        """Messages waiting in the analysis queue (None: the broker cannot say now).

        A queue the broker does not know (it restarted empty) has none waiting.
        """
        try:
            with self.app.connection_for_read() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
                channel = connection.default_channel
                try:
                    declared = channel.queue_declare(queue=ANALYSIS_QUEUE, passive=True)
                except Exception as exc:
                    if "NOT_FOUND" in str(exc) or "not found" in str(exc).lower():
                        return 0
                    raise
                return int(declared.message_count)
        except Exception as exc:
            self._broker_down(exc)
            return None

    def check_broker(self, timeout: float = 5.0) -> None:
        """Raise when the broker cannot be reached."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
