"""Study assembly (cxr_node.assembly): a released association ends its studies at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.assembly import LOST_JOB_GRACE_SECONDS, WORKER_SILENT_SECONDS, StudyAssembler
from cxr_node.jobs import InferenceJob
from cxr_node.ledger import Ledger, ManualClock, StudyState
from tests.unit.test_ledger import record, state

STUDY = "1.2.826.0.1.3680043.8.498.7"
OTHER = "1.2.826.0.1.3680043.8.498.8"


class RecordingQueue:
    """Stands in for the Celery queue: remembers what was submitted."""

    def __init__(self) -> None:
        self.analyses: list[str] = []
        self.notices: list[str] = []
        self.deliveries: list[str] = []
        self.backlog: int | None = 0
        self.broker_up = True

    def submit_analysis(self, job: InferenceJob, countdown: float = 0.0) -> bool:
        if self.broker_up:
            self.analyses.append(job.study_key)
        return self.broker_up

    def submit_notice(self, study_key: str) -> bool:
        if self.broker_up:
            self.notices.append(study_key)
        return self.broker_up

    def submit_delivery(self, destination: str, countdown: float = 0.0) -> bool:
        if self.broker_up:
            self.deliveries.append(destination)
        return self.broker_up

    def analysis_backlog(self) -> int | None:
        return self.backlog if self.broker_up else None


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    instance = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    yield instance
    instance.close()


def assembler(ledger: Ledger, queue: RecordingQueue) -> StudyAssembler:
    return StudyAssembler(ledger, queue, quiet_seconds=3600.0, owns_all_workers=True)  # type: ignore[arg-type]


def test_a_released_study_is_queued_without_waiting_for_the_quiet_period(ledger: Ledger) -> None:
    queue = RecordingQueue()
    record(ledger, STUDY)
    assembly = assembler(ledger, queue)
    assert assembly.assemble_ready() == 0  # an hour of quiet is far off
    assembly.studies_complete([STUDY])
    assert assembly.assemble_ready() == 1
    assert queue.analyses == [STUDY]
    assert state(ledger, STUDY) is StudyState.QUEUED
    assembly.studies_complete([STUDY])  # a second release of the same study: nothing new
    assert assembly.assemble_ready() == 0
    assert queue.analyses == [STUDY]


def test_a_released_study_with_nothing_to_analyse_gets_one_notice(ledger: Ledger) -> None:
    queue = RecordingQueue()
    record(ledger, STUDY, eligible=False, reason_code="LATERAL_VIEW")
    assembly = assembler(ledger, queue)
    assembly.studies_complete([STUDY])
    assembly.studies_complete([STUDY])
    assert assembly.assemble_ready() == 1
    assembly.studies_complete([STUDY])
    assert assembly.assemble_ready() == 0
    assert state(ledger, STUDY) is StudyState.NOT_ELIGIBLE
    assert queue.notices == [STUDY]
    assert queue.analyses == []


def test_a_dead_analysis_worker_s_studies_are_sent_again_at_once(ledger: Ledger) -> None:
    """Embedded mode: the worker that died held them; nobody else can (its message may be
    lost too, as when the file-system queue handed it a partial message)."""
    queue = RecordingQueue()
    record(ledger, STUDY)
    record(ledger, OTHER)
    assembly = assembler(ledger, queue)
    assembly.studies_complete([STUDY, OTHER])
    assembly.assemble_ready()
    assert ledger.claim(STUDY, lease_seconds=600) is not None  # ANALYSING, lease far off
    queue.analyses.clear()
    assembly.worker_exited("analysis")
    assembly._recover_after_worker_exits()
    assert sorted(queue.analyses) == sorted([STUDY, OTHER])
    assert state(ledger, STUDY) is StudyState.QUEUED
    assembly._recover_after_worker_exits()  # once per exit
    assert len(queue.analyses) == 2


def test_with_an_external_broker_a_worker_exit_changes_nothing(ledger: Ledger) -> None:
    queue = RecordingQueue()
    record(ledger, STUDY)
    assembly = StudyAssembler(ledger, queue, quiet_seconds=3600.0, owns_all_workers=False)  # type: ignore[arg-type]
    assembly.studies_complete([STUDY])
    assembly.assemble_ready()
    queue.analyses.clear()
    assembly.worker_exited("analysis")
    assembly._recover_after_worker_exits()
    assert queue.analyses == []


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Ledger, ManualClock]]:
    clock = ManualClock()
    instance = Ledger(f"sqlite:///{tmp_path / 'clocked.sqlite'}", clock=clock)
    yield instance, clock
    instance.close()


def broker_assembler(ledger: Ledger, queue: RecordingQueue) -> StudyAssembler:
    return StudyAssembler(ledger, queue, quiet_seconds=3600.0, owns_all_workers=False)  # type: ignore[arg-type]


def test_with_the_broker_down_studies_wait_in_the_ledger_and_go_when_it_is_back(
    clocked: tuple[Ledger, ManualClock],
) -> None:
    ledger, clock = clocked
    queue = RecordingQueue()
    queue.broker_up = False
    for study in (STUDY, OTHER):
        record(ledger, study)
    assembly = broker_assembler(ledger, queue)
    assembly.recover(at_start=True)  # serve starting while the broker is down: no error
    assembly.studies_complete([STUDY, OTHER])
    assert assembly.assemble_ready() == 2
    assert state(ledger, STUDY) is StudyState.QUEUED and queue.analyses == []
    clock.advance(5)
    assembly.recover(at_start=False)
    assert queue.analyses == []  # still down
    queue.broker_up = True
    assembly.recover(at_start=False)
    assert queue.analyses == []  # within the grace: the messages may be on their way
    clock.advance(LOST_JOB_GRACE_SECONDS)
    assembly.recover(at_start=False)
    assert sorted(queue.analyses) == sorted([STUDY, OTHER])


def test_queued_jobs_the_broker_still_holds_are_not_sent_again(
    clocked: tuple[Ledger, ManualClock],
) -> None:
    ledger, clock = clocked
    queue = RecordingQueue()
    record(ledger, STUDY)
    assembly = broker_assembler(ledger, queue)
    assembly.studies_complete([STUDY])
    assembly.assemble_ready()
    queue.analyses.clear()
    queue.backlog = 3  # a backlog: the job is in it
    clock.advance(60)
    assembly.recover(at_start=False)
    assert queue.analyses == []
    queue.backlog = 0  # the broker restarted empty: the job is lost
    assembly.recover(at_start=False)
    assert queue.analyses == [STUDY]


def test_a_job_held_by_a_worker_that_went_silent_is_sent_again_in_seconds(
    clocked: tuple[Ledger, ManualClock],
) -> None:
    ledger, clock = clocked
    queue = RecordingQueue()
    record(ledger, STUDY)
    record(ledger, OTHER)
    assembly = broker_assembler(ledger, queue)
    assembly.studies_complete([STUDY, OTHER])
    assembly.assemble_ready()
    queue.analyses.clear()
    queue.backlog = 10  # other jobs wait: only the ledger can tell these two are lost
    ledger.worker_heartbeat("w1", "analysis", "host", 1)
    ledger.note_reserved(OTHER, "w1")  # taken, not started
    assert ledger.claim(STUDY, 30, worker_id="w1") is not None  # being analysed
    clock.advance(WORKER_SILENT_SECONDS + 11)  # w1 was killed: no beat, no claim renewal
    assembly.recover(at_start=False)
    assert sorted(queue.analyses) == sorted([STUDY, OTHER])
    assert state(ledger, STUDY) is StudyState.QUEUED
