"""``cxr-node worker``: Celery workers for analysis (models warm) and for delivery.

The roles are separate processes: analysis runs ``analysis_concurrency`` studies at once on
warm models (``solo`` pool for one, ``threads`` for more: the forward passes release the GIL),
delivery serves several destinations at once (``threads`` pool) and never imports torch, so a
slow or dead destination never holds up an analysis. ``--role all`` (the default)
runs the analysis worker here and supervises a delivery worker beside it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Literal

from celery import signals

from cxr_node.heartbeat import Heartbeat
from cxr_node.ledger import Ledger
from cxr_node.logs import traceback_frames
from cxr_node.queue import ANALYSIS_QUEUE, ANALYZE_TASK, DELIVERY_QUEUE, JobQueue
from cxr_node.settings import Settings
from workers import runtime
from workers.deliver.dicom import AssociationPool

log = logging.getLogger(__name__)

WorkerRole = Literal["all", "analysis", "delivery"]
MAX_DEFAULT_CPU_CONCURRENCY = 4
MAX_DEFAULT_GPU_CONCURRENCY = 16
"""Studies at once on a GPU: their host side in parallel, their images batched on the GPU."""
WORKER_HEARTBEAT_SECONDS = 5.0
"""How often a worker tells the ledger it is alive (serve takes one silent for 20 s as gone)."""


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

    analyzer = Analyzer(settings)
    concurrency, threads = analysis_parallelism(
        settings, on_gpu=analyzer.ensemble.device.type != "cpu"
    )
    torch.set_num_threads(threads)
    analyzer.batch_for(concurrency)
    queue = JobQueue(settings)
    worker_id = _worker_id("analysis")
    ctx = runtime.configure(settings, queue, analyzer=analyzer, worker_id=worker_id)
    import workers.tasks
    import workers.uploads  # noqa: F401  (and the one for files uploaded to the API)

    def note_reserved(request: Any = None, **_: Any) -> None:
        """A job taken from the queue, not started yet: if this worker dies now, serve knows
        that job is lost as soon as the heartbeat stops (PS: the broker would keep it)."""
        if request is None or getattr(request, "name", None) != ANALYZE_TASK:
            return
        try:
            study_key = str(request.args[0]["study_key"])
            ctx.ledger.note_reserved(study_key, worker_id)
        except Exception:
            log.exception("could not note a reserved job in the ledger")

    signals.task_received.connect(note_reserved, weak=False)

    log.info(
        "analysis worker ready (%s; %d stud%s at once, %d torch thread%s)",
        _mode(settings),
        concurrency,
        "y" if concurrency == 1 else "ies",
        threads,
        "" if threads == 1 else "s",
    )
    pool = "solo" if concurrency == 1 else "threads"
    return _consume(queue, settings, ANALYSIS_QUEUE, pool, concurrency, worker_id, ctx.ledger)


def analysis_parallelism(settings: Settings, on_gpu: bool) -> tuple[int, int]:
    """How many studies one analysis worker runs at once, and torch's intra-op threads.

    On a CPU, one study per core plus one (at most 4), the cores shared out as torch threads:
    the forward passes keep the cores busy while the extra study's decoding, encoding and
    writing run in Python (on 2 cores, 3 studies at once sustained about 14 % more than 2 in
    docs/benchmarks.md). On a GPU one study per core (at most 16): their host
    side runs in parallel while the inference batcher gathers their images into batched forward
    passes (:mod:`workers.batching`). Settings override both.
    """
    cores = max(1, os.cpu_count() or 1)
    if on_gpu:
        default = min(cores, MAX_DEFAULT_GPU_CONCURRENCY)
    else:
        default = 1 if cores < 2 else min(cores + 1, MAX_DEFAULT_CPU_CONCURRENCY)
    concurrency = settings.analysis_concurrency or default
    threads = settings.torch_threads or max(1, cores // concurrency)
    return concurrency, threads


def _run_delivery(settings: Settings) -> int:
    queue = JobQueue(settings)
    pool = AssociationPool(
        settings.ae_title, settings.delivery_timeout_seconds, settings.association_idle_seconds
    )
    worker_id = _worker_id("delivery")
    ctx = runtime.configure(settings, queue, pool=pool, worker_id=worker_id)
    from workers import delivery, notices  # noqa: F401  (registers the tasks on the app)

    stop = threading.Event()
    reaper = threading.Thread(
        target=_close_idle_associations, args=(pool, stop), name="association-reaper", daemon=True
    )
    reaper.start()
    log.info("delivery worker ready (%s)", _mode(settings))
    try:
        return _consume(
            queue,
            settings,
            DELIVERY_QUEUE,
            "threads",
            settings.delivery_concurrency,
            worker_id,
            ctx.ledger,
        )
    finally:
        stop.set()
        pool.close_all()


def _close_idle_associations(pool: AssociationPool, stop: threading.Event) -> None:
    interval = max(0.5, min(pool.idle_seconds / 2, 5.0))
    while not stop.wait(interval):
        try:
            pool.close_idle()
        except Exception as exc:  # never let the reaper die
            log.warning("closing idle associations failed: %s", traceback_frames(exc))


def _worker_id(role: str) -> str:
    """This worker's name: its Celery hostname, and its row in the ledger's ``workers``."""
    return f"cxr-{role}-{os.getpid()}@{socket.gethostname()}"


def _consume(
    queue: JobQueue,
    settings: Settings,
    queue_name: str,
    pool_cls: str,
    concurrency: int,
    worker_id: str,
    ledger: Ledger,
) -> int:
    """Consume ``queue_name`` until stopped, beating in the ledger; Celery's exit code.

    The worker reconnects to a broker that went away for as long as it takes (see
    ``cxr_node.queue``); if it stops for any other reason than a signal, the code is non-zero
    so that a supervisor restarts it.
    """
    role = worker_id.split("-", 2)[1]
    host, pid = socket.gethostname(), os.getpid()

    def beat() -> bool:
        ledger.worker_heartbeat(worker_id, role, host, pid)
        return True

    beat()
    worker = queue.app.Worker(
        hostname=worker_id,
        pool_cls=pool_cls,
        concurrency=concurrency,
        queues=[queue_name],
        loglevel=settings.log_level,
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    )
    with Heartbeat(f"worker-{role}", WORKER_HEARTBEAT_SECONDS, beat):
        worker.start()
    code = int(worker.exitcode or 0)
    try:
        ledger.worker_stopped(worker_id)
    except Exception:
        log.exception("could not record this worker's stop in the ledger")
    log.log(logging.ERROR if code else logging.INFO, "%s worker stopped (exit %d)", role, code)
    return code


def _mode(settings: Settings) -> str:
    return "embedded queue" if settings.embedded_queue else "broker"
