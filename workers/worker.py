"""``cxr-node worker``: a Celery worker with the models loaded once and kept warm."""

from __future__ import annotations

import logging
import os
import socket

import torch

from cxr_node.queue import ANALYSIS_QUEUE, DELIVERY_QUEUE, JobQueue
from cxr_node.settings import Settings
from workers import runtime

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    """Load models, then consume the analysis and delivery queues until SIGTERM."""
    torch.set_num_threads(settings.torch_threads or max(1, os.cpu_count() or 1))
    queue = JobQueue(settings)
    runtime.configure(settings, queue)
    import workers.tasks  # noqa: F401  (registers the tasks on the app)

    log.info("worker ready (%s)", "embedded queue" if settings.embedded_queue else "broker")
    queue.app.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={ANALYSIS_QUEUE},{DELIVERY_QUEUE}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={settings.log_level}",
            f"--hostname=cxr-worker-{os.getpid()}@{socket.gethostname()}",
        ]
    )
    return 0
