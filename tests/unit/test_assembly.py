"""Study assembly (cxr_node.assembly): a released association ends its studies at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.assembly import StudyAssembler
from cxr_node.jobs import InferenceJob
from cxr_node.ledger import Ledger, StudyState
from tests.unit.test_ledger import record, state

STUDY = "1.2.826.0.1.3680043.8.498.7"
OTHER = "1.2.826.0.1.3680043.8.498.8"


class RecordingQueue:
    """Stands in for the Celery queue: remembers what was submitted."""

    def __init__(self) -> None:
        self.analyses: list[str] = []
        self.notices: list[str] = []

    def submit_analysis(self, job: InferenceJob, countdown: float = 0.0) -> None:
        self.analyses.append(job.study_key)

    def submit_notice(self, study_key: str) -> None:
        self.notices.append(study_key)

    def submit_delivery(self, destination: str, countdown: float = 0.0) -> None:
        pass


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
