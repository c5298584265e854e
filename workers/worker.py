"""``cxr-node worker``: Celery workers for analysis (models warm) and for delivery.

The roles are separate processes: analysis runs one study at a time on the models (``solo``
pool), delivery serves several destinations at once (``threads`` pool) and never imports
torch, so a slow or dead destination never holds up an analysis. ``--role all`` (the default)
runs the analysis worker here and supervises a delivery worker beside it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Literal

from cxr_node.dicom.scu import AssociationPool
from cxr_node.queue import ANALYSIS_QUEUE, DELIVERY_QUEUE, JobQueue
from cxr_node.settings import Settings
from workers import runtime

log = logging.getLogger(__name__)

WorkerRole = Literal["all", "analysis", "delivery"]


def run_worker(settings: Settings, role: WorkerRole = "all") -> int:
    """Run the worker of ``role`` until SIGTERM."""
    if role == "delivery":
        return _run_delivery(settings)
    supervisor = None
    if role == "all":
        from cxr_node.embedded import WorkerSupervisor

        supervisor = WorkerSupervisor(settings, role="delivery")
        supervisor.start()
    try:
        return _run_analysis(settings)
    finally:
        if supervisor is not None:
            supervisor.stop()


def _run_analysis(settings: Settings) -> int:
    import torch

    from workers.analysis import Analyzer

    torch.set_num_threads(settings.torch_threads or max(1, os.cpu_count() or 1))
    queue = JobQueue(settings)
    runtime.configure(settings, queue, analyzer=Analyzer(settings))
    import workers.tasks  # noqa: F401  (registers the analysis task on the app)

    log.info("analysis worker ready (%s)", _mode(settings))
    _consume(queue, settings, ANALYSIS_QUEUE, ["--pool=solo"], "analysis")
    return 0


def _run_delivery(settings: Settings) -> int:
    queue = JobQueue(settings)
    pool = AssociationPool(
        settings.ae_title, settings.delivery_timeout_seconds, settings.association_idle_seconds
    )
    runtime.configure(settings, queue, pool=pool)
    from workers import delivery, notices  # noqa: F401  (registers the tasks on the app)

    stop = threading.Event()
    reaper = threading.Thread(
        target=_close_idle_associations, args=(pool, stop), name="association-reaper", daemon=True
    )
    reaper.start()
    log.info("delivery worker ready (%s)", _mode(settings))
    try:
        _consume(
            queue,
            settings,
            DELIVERY_QUEUE,
            ["--pool=threads", f"--concurrency={settings.delivery_concurrency}"],
            "delivery",
        )
    finally:
        stop.set()
        pool.close_all()
    return 0


def _close_idle_associations(pool: AssociationPool, stop: threading.Event) -> None:
    interval = max(0.5, min(pool.idle_seconds / 2, 5.0))
    while not stop.wait(interval):
        try:
            pool.close_idle()
        except Exception as exc:  # never let the reaper die
            log.warning("closing idle associations failed (%s)", type(exc).__name__)


def _consume(
    queue: JobQueue, settings: Settings, queue_name: str, pool_args: list[str], role: str
) -> None:
    queue.app.worker_main(
        [
            "worker",
            *pool_args,
            f"--queues={queue_name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level}",
            f"--hostname=cxr-{role}-{os.getpid()}@{socket.gethostname()}",
        ]
    )


def _mode(settings: Settings) -> str:
    return "embedded queue" if settings.embedded_queue else "broker"
