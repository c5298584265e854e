"""The Celery side of the edge: one task path for the embedded queue and for Redis.

Without a broker URL the embedded queue is Kombu's file-system transport under
``<data_dir>/queue`` (no server needed), writing each message whole
(:mod:`cxr_node.embedded_transport`). It is not the durability guarantee by itself: the ledger
is, and :mod:`cxr_node.assembly` re-sends any job that a crash may have lost. Task names are
strings so that this module never imports the worker code (or torch).
"""

from __future__ import annotations

from celery import Celery

from cxr_node.jobs import InferenceJob
from cxr_node.settings import Settings

ANALYZE_TASK = "cxr_node.analyze_study"
DELIVER_TASK = "cxr_node.deliver_to"
NOTICE_TASK = "cxr_node.report_not_analysed"
EMBEDDED_TRANSPORT = "cxr_node.embedded_transport:Transport"
"""Kombu's file-system transport, writing each message whole (see that module)."""
ANALYSIS_QUEUE = "analysis"
DELIVERY_QUEUE = "delivery"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from settings; the worker registers its tasks on it."""
    if settings.broker_url is not None:
        broker = settings.broker_url.get_secret_value()
        transport_options: dict[str, object] = {"visibility_timeout": 3600}
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
            DELIVER_TASK: {"queue": DELIVERY_QUEUE},
            NOTICE_TASK: {"queue": DELIVERY_QUEUE},
        },
        task_default_queue=ANALYSIS_QUEUE,
        enable_utc=True,
    )
    return app


class JobQueue:
    """What the edge puts on the queue."""

    def __init__(self, settings: Settings) -> None:
        self.app = make_celery(settings)

    def submit_analysis(self, job: InferenceJob, countdown: float = 0.0) -> None:
        """Hand one study to the analysis workers (after ``countdown`` seconds)."""
        self.app.send_task(
            ANALYZE_TASK,
            args=[job.model_dump(mode="json")],
            queue=ANALYSIS_QUEUE,
            countdown=countdown or None,
        )

    def submit_delivery(self, destination: str, countdown: float = 0.0) -> None:
        """Ask a delivery worker to send every due result to one destination (by name)."""
        self.app.send_task(
            DELIVER_TASK, args=[destination], queue=DELIVERY_QUEUE, countdown=countdown or None
        )

    def submit_notice(self, study_key: str) -> None:
        """Ask a delivery worker to write (and send) the "not analysed" SR of a study."""
        self.app.send_task(NOTICE_TASK, args=[study_key], queue=DELIVERY_QUEUE)

    def check_broker(self, timeout: float = 5.0) -> None:
        """Raise when the broker cannot be reached."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=timeout)
