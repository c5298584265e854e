"""Study assembly and recovery: turn quiet studies into jobs, and re-send jobs a crash lost.

A study is assembled once the association that sent it is released and no other open
association has sent images of it (``assemble_on_release``), or else once no instance has
arrived for ``study_quiet_seconds``. Every job is
recorded in the ledger before it is sent, and sending twice is harmless (the worker claims a
study atomically, a delivery task leases its destination, a notice is recorded once), so
re-sending after a crash never loses or duplicates results. Delivery retries are scheduled in
the ledger; the sweep here wakes a destination whose retry time has come even when the
queue's own delayed message died with a worker.

What is overdue is the ledger's call, every few seconds (:meth:`Ledger.overdue_studies`): a claim
whose worker stopped renewing it (30 s), a job taken from the queue by a worker that went
silent, a job the queue no longer holds (the analysis queue is empty but the study still waits:
a broker restarted without persistence). A broker that is down costs nothing but time: jobs
wait in the ledger and go out when it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cxr_node.jobs import InferenceJob
from cxr_node.ledger import Ledger, StudyRow, StudyState
from cxr_node.queue import JobQueue
from cxr_node.spool import log_ref

log = logging.getLogger(__name__)

RESEND_QUEUED_AFTER_SECONDS = 300.0
"""The last resort: a job queued this long is sent again whatever the broker says."""
RECOVERY_INTERVAL_SECONDS = 5.0
SWEEP_INTERVAL_SECONDS = 5.0
RESUBMIT_AFTER_SECONDS = 10.0
"""A destination or notice job is sent again this long after the last one while its work is
still due (a delayed retry message may have died with its delivery worker)."""
LOST_JOB_GRACE_SECONDS = 10.0
"""A queued job the broker does not hold is lost after this long (publishing takes less)."""
WORKER_SILENT_SECONDS = 20.0
"""A worker whose heartbeat (every 5 s) is this old is gone."""


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
        """Re-send jobs that are lost (see the module's docstring).

        At start, when this process owns every worker (the embedded queue: its workers died
        with it), every unfinished job is re-sent and every destination lease freed.
        """
        if at_start and self._owns_all_workers:
            self._resend_studies(queued_older_than=0.0, all_analysing=True)
            self._free_destination_leases()
        else:
            self._resend_overdue()
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
        self._last_sweep = now
        for name in self._ledger.destinations_due():
            if f"deliver:{name}" not in self._submitted:
                if not self._queue.submit_delivery(name):
                    return  # the broker is down: try again next sweep
                self._submitted[f"deliver:{name}"] = now
        if self._not_analysed_report:
            for study_key in self._ledger.studies_needing_notice():
                if f"notice:{study_key}" not in self._submitted:
                    if not self._queue.submit_notice(study_key):
                        return
                    self._submitted[f"notice:{study_key}"] = now

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
            except Exception:
                log.exception("study assembly failed this round; retrying")
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
        self._resend(
            self._ledger.stale_studies(
                queued_older_than=queued_older_than, all_analysing=all_analysing
            )
        )

    def _resend_overdue(self) -> None:
        """Jobs the ledger knows are lost, and (last resort) any queued for very long."""
        overdue = self._ledger.overdue_studies(
            queue_empty=True,
            grace_seconds=LOST_JOB_GRACE_SECONDS,
            worker_silent_seconds=WORKER_SILENT_SECONDS,
        )
        waiting = {
            s.study_key for s in overdue if s.state is StudyState.QUEUED and s.reserved_by is None
        }
        if waiting and self._queue.analysis_backlog() != 0:
            # the broker still holds jobs (or cannot say): they are not lost yet
            overdue = [s for s in overdue if s.study_key not in waiting]
        seen = {s.study_key for s in overdue}
        overdue += [
            s
            for s in self._ledger.stale_studies(
                queued_older_than=RESEND_QUEUED_AFTER_SECONDS, all_analysing=False
            )
            if s.study_key not in seen
        ]
        self._resend(overdue)

    def _resend(self, studies: list[StudyRow]) -> None:
        for study in studies:
            if not self._ledger.mark_queued(study.study_key, expect=study.state):
                continue  # a worker finished or took it meanwhile
            log.info("re-sending study %s (was %s)", log_ref(study.study_key), study.state)
            if not self._queue.submit_analysis(self._job(study.study_key)):
                return  # the broker is down: the rest wait in the ledger for the next round

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
            if self._not_analysed_report and self._queue.submit_notice(study_key):
                self._submitted[f"notice:{study_key}"] = time.monotonic()
            return
        if not self._ledger.mark_queued(study_key, expect=StudyState.RECEIVED):
            return
        sent = self._queue.submit_analysis(job)
        log.info(
            "study %s queued with %d image(s)%s",
            log_ref(study_key),
            len(job.instance_paths),
            "" if sent else " (in the ledger until the broker is back)",
        )

    def _job(self, study_key: str) -> InferenceJob:
        study = self._ledger.study(study_key)
        assert study is not None
        return InferenceJob(
            study_key=study_key,
            instance_paths=self._ledger.eligible_paths(study_key),
            destinations=study.destinations,
        )
