"""Study assembly and recovery: turn quiet studies into jobs, and re-send jobs a crash lost.

A study is assembled once the association that sent it is released and no other open
association has sent images of it (``assemble_on_release``), or else once no instance has
arrived for ``study_quiet_seconds``. Every job is
recorded in the ledger before it is sent, and sending twice is harmless (the worker claims a
study atomically, a delivery task leases its destination, a notice is recorded once), so
re-sending after a crash never loses or duplicates results. Delivery retries are scheduled in
the ledger; the sweep here wakes a destination whose retry time has come even when the
queue's own delayed message died with a worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cxr_node.jobs import InferenceJob
from cxr_node.ledger import Ledger, StudyState
from cxr_node.logs import describe_exception
from cxr_node.queue import JobQueue
from cxr_node.spool import log_ref

log = logging.getLogger(__name__)

RESEND_QUEUED_AFTER_SECONDS = 300.0
RECOVERY_INTERVAL_SECONDS = 30.0
SWEEP_INTERVAL_SECONDS = 5.0
RESUBMIT_AFTER_SECONDS = 30.0


class StudyAssembler:
    """Runs in the serve process: quiet studies to jobs, lost jobs back to the queue."""

    def __init__(
        self,
        ledger: Ledger,
        queue: JobQueue,
        quiet_seconds: float,
        owns_all_workers: bool,
        not_analysed_report: bool = True,
        housekeeping: Callable[[], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._housekeeping = housekeeping
        self._owns_all_workers = owns_all_workers
        self._queue = queue
        self._quiet_seconds = quiet_seconds
        self._not_analysed_report = not_analysed_report
        self._last_recovery = 0.0
        self._last_sweep = 0.0
        self._submitted: dict[str, float] = {}
        self._released: set[str] = set()
        self._exited_roles: set[str] = set()
        self._signals_lock = threading.Lock()  # guards _released and _exited_roles
        self._wake = threading.Event()

    def worker_exited(self, role: str) -> None:
        """An embedded worker died (any thread): what it held is recovered on the next tick,
        not after the usual timeouts."""
        with self._signals_lock:
            self._exited_roles.add(role)
        self._wake.set()

    def studies_complete(self, study_keys: list[str]) -> None:
        """Their senders released their associations: assemble them now (any thread)."""
        with self._signals_lock:
            self._released.update(study_keys)
        self._wake.set()

    def assemble_ready(self) -> int:
        """Enqueue (or refuse with a reason) every study that is complete or has gone quiet;
        return how many."""
        with self._signals_lock:
            released, self._released = self._released, set()
        ready = [key for key in sorted(released) if self._ledger.is_receiving(key)]
        ready += [
            key
            for key in self._ledger.studies_quiet_since(self._quiet_seconds)
            if key not in released
        ]
        for study_key in ready:
            self._dispatch(study_key)
        return len(ready)

    def recover(self, *, at_start: bool) -> None:
        """Re-send jobs that may be lost: at start every unfinished one, later only stale ones.

        Studies being analysed are re-sent at start only when this process owns every worker
        (the embedded queue: its worker died with it); otherwise only when their lease expired.
        """
        self._resend_studies(
            queued_older_than=0.0 if at_start else RESEND_QUEUED_AFTER_SECONDS,
            all_analysing=at_start and self._owns_all_workers,
        )
        if at_start and self._owns_all_workers:
            self._free_destination_leases()
        if self._housekeeping is not None:
            self._housekeeping()
        self._last_recovery = time.monotonic()
        self.sweep()

    def sweep(self) -> None:
        """Wake destinations whose retry time has come; ask for missing "not analysed" SRs.

        Each is re-sent at most every RESUBMIT_AFTER_SECONDS while its task may be queued.
        """
        now = time.monotonic()
        self._submitted = {
            k: t for k, t in self._submitted.items() if now - t < RESUBMIT_AFTER_SECONDS
        }
        for name in self._ledger.destinations_due():
            if f"deliver:{name}" not in self._submitted:
                self._submitted[f"deliver:{name}"] = now
                self._queue.submit_delivery(name)
        if self._not_analysed_report:
            for study_key in self._ledger.studies_needing_notice():
                if f"notice:{study_key}" not in self._submitted:
                    self._submitted[f"notice:{study_key}"] = now
                    self._queue.submit_notice(study_key)
        self._last_sweep = now

    def run(self, stop: threading.Event, tick_seconds: float = 0.1) -> None:
        """Loop until ``stop`` is set; errors are logged and the loop goes on."""
        while not stop.is_set():
            try:
                self._recover_after_worker_exits()
                self.assemble_ready()
                if time.monotonic() - self._last_recovery > RECOVERY_INTERVAL_SECONDS:
                    self.recover(at_start=False)
                elif time.monotonic() - self._last_sweep > SWEEP_INTERVAL_SECONDS:
                    self.sweep()
            except Exception as exc:
                log.error(
                    "study assembly failed this round (%s); retrying", describe_exception(exc)
                )
                stop.wait(1.0)
            self._wake.wait(tick_seconds)
            self._wake.clear()

    def _recover_after_worker_exits(self) -> None:
        """An analysis worker's studies (and a lost job message) go back to the queue; a
        delivery worker's destination leases are freed. Only when this process owns every
        worker (embedded): then nobody else can be working on them."""
        with self._signals_lock:
            roles, self._exited_roles = self._exited_roles, set()
        if not roles or not self._owns_all_workers:
            return
        if roles & {"analysis", "all"}:
            self._resend_studies(queued_older_than=0.0, all_analysing=True)
        if roles & {"delivery", "all"}:
            self._free_destination_leases()
            self.sweep()

    def _resend_studies(self, *, queued_older_than: float, all_analysing: bool) -> None:
        """Put studies whose job may be lost back on the queue (see Ledger.stale_studies)."""
        for study in self._ledger.stale_studies(
            queued_older_than=queued_older_than, all_analysing=all_analysing
        ):
            if not self._ledger.mark_queued(study.study_key, expect=study.state):
                continue  # a worker finished or took it meanwhile
            log.info("re-sending study %s (was %s)", log_ref(study.study_key), study.state)
            self._queue.submit_analysis(self._job(study.study_key))

    def _free_destination_leases(self) -> None:
        """No delivery worker is alive to hold them (embedded mode)."""
        self._ledger.release_all_destination_leases()
        self._submitted.clear()

    def _dispatch(self, study_key: str) -> None:
        job = self._job(study_key)
        if not job.instance_paths:
            refused = self._ledger.instances_of(study_key)
            reasons = sorted({i.reason_code or "UNKNOWN" for i in refused})
            texts = sorted({i.reason or "" for i in refused})
            self._ledger.mark_not_eligible(study_key, ",".join(reasons), "; ".join(texts))
            log.info("study %s not analysed: %s", log_ref(study_key), ",".join(reasons))
            if self._not_analysed_report:
                self._submitted[f"notice:{study_key}"] = time.monotonic()
                self._queue.submit_notice(study_key)
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
