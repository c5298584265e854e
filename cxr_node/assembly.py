"""Study assembly and recovery: turn quiet studies into jobs, and re-send jobs a crash lost.

A study is assembled once no instance has arrived for ``study_quiet_seconds``. Every job is
recorded in the ledger before it is sent, and sending twice is harmless (the worker claims a
study atomically), so re-sending after a crash never loses or duplicates results.
"""

from __future__ import annotations

import logging
import threading
import time

from cxr_node.jobs import InferenceJob
from cxr_node.ledger import Ledger, StudyState
from cxr_node.logs import describe_exception
from cxr_node.queue import JobQueue
from cxr_node.spool import log_ref

log = logging.getLogger(__name__)

RESEND_QUEUED_AFTER_SECONDS = 300.0
RESEND_DELIVERY_AFTER_SECONDS = 600.0
RECOVERY_INTERVAL_SECONDS = 30.0


class StudyAssembler:
    """Runs in the serve process: quiet studies to jobs, lost jobs back to the queue."""

    def __init__(
        self, ledger: Ledger, queue: JobQueue, quiet_seconds: float, owns_all_workers: bool
    ) -> None:
        self._ledger = ledger
        self._owns_all_workers = owns_all_workers
        self._queue = queue
        self._quiet_seconds = quiet_seconds
        self._last_recovery = 0.0

    def assemble_ready(self) -> int:
        """Enqueue (or refuse with a reason) every study that has gone quiet; return how many."""
        ready = self._ledger.studies_quiet_since(self._quiet_seconds)
        for study_key in ready:
            self._dispatch(study_key)
        return len(ready)

    def recover(self, *, at_start: bool) -> None:
        """Re-send jobs that may be lost: at start every unfinished one, later only stale ones.

        Studies being analysed are re-sent at start only when this process owns every worker
        (the embedded queue: its worker died with it); otherwise only when their lease expired.
        """
        for study in self._ledger.stale_studies(
            queued_older_than=0.0 if at_start else RESEND_QUEUED_AFTER_SECONDS,
            all_analysing=at_start and self._owns_all_workers,
        ):
            if not self._ledger.mark_queued(study.study_key, expect=study.state):
                continue  # a worker finished or took it meanwhile
            log.info("re-sending study %s (was %s)", log_ref(study.study_key), study.state)
            self._queue.submit_analysis(self._job(study.study_key))
        for study_key in self._ledger.undelivered_studies(
            0.0 if at_start else RESEND_DELIVERY_AFTER_SECONDS
        ):
            self._ledger.touch_deliveries(study_key)
            self._queue.submit_delivery(study_key)
        self._last_recovery = time.monotonic()

    def run(self, stop: threading.Event, tick_seconds: float = 0.1) -> None:
        """Loop until ``stop`` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.assemble_ready()
                if time.monotonic() - self._last_recovery > RECOVERY_INTERVAL_SECONDS:
                    self.recover(at_start=False)
            except Exception as exc:
                log.error(
                    "study assembly failed this round (%s); retrying", describe_exception(exc)
                )
                stop.wait(1.0)
            stop.wait(tick_seconds)

    def _dispatch(self, study_key: str) -> None:
        job = self._job(study_key)
        if not job.instance_paths:
            refused = self._ledger.instances_of(study_key)
            reasons = sorted({i.reason_code or "UNKNOWN" for i in refused})
            texts = sorted({i.reason or "" for i in refused})
            self._ledger.mark_not_eligible(study_key, ",".join(reasons), "; ".join(texts))
            log.info("study %s not analysed: %s", log_ref(study_key), ",".join(reasons))
            return
        if not self._ledger.mark_queued(study_key, expect=StudyState.RECEIVED):
            return
        self._queue.submit_analysis(job)
        log.info("study %s queued with %d image(s)", log_ref(study_key), len(job.instance_paths))

    def _job(self, study_key: str) -> InferenceJob:
        study = self._ledger.study(study_key)
        assert study is not None
        return InferenceJob(
            study_key=study_key,
            instance_paths=self._ledger.eligible_paths(study_key),
            destinations=study.destinations,
        )
