"""Recovery in seconds, on the ledger's clock: claim heartbeats, worker liveness, lost jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cxr_node.ledger import Ledger, ManualClock, StudyState
from tests.unit.test_ledger import record

STUDY = "1.2.826.0.1.3680043.8.498.61"
OTHER = "1.2.826.0.1.3680043.8.498.62"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(ledger_url: str, clock: ManualClock) -> Iterator[Ledger]:
    instance = Ledger(ledger_url, clock=clock)
    yield instance
    instance.close()


def overdue(ledger: Ledger, *, queue_empty: bool = True) -> list[str]:
    rows = ledger.overdue_studies(
        queue_empty=queue_empty, grace_seconds=10, worker_silent_seconds=20
    )
    return sorted(row.study_key for row in rows)


def test_a_renewed_claim_is_never_taken_over(ledger: Ledger, clock: ManualClock) -> None:
    record(ledger, STUDY)
    ledger.mark_queued(STUDY)
    token = ledger.claim(STUDY, 30, worker_id="w1")
    assert token is not None
    for _ in range(10):  # a long analysis: five minutes, renewed every 10 s
        clock.advance(10)
        assert ledger.renew_claim(STUDY, token, 30)
        assert ledger.claim(STUDY, 30, worker_id="w2") is None
        assert overdue(ledger) == []
    clock.advance(31)  # the worker died: no renewal
    assert overdue(ledger) == [STUDY]
    assert ledger.mark_queued(STUDY, expect=StudyState.ANALYSING)
    assert ledger.claim(STUDY, 30, worker_id="w2") == token + 1
    assert ledger.renew_claim(STUDY, token, 30) is False  # the old holder has lost it


def test_a_job_taken_by_a_worker_that_went_silent_is_overdue(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.worker_heartbeat("w1", "analysis", "host", 1)
    ledger.worker_heartbeat("w2", "analysis", "host", 2)
    for study in (STUDY, OTHER):
        record(ledger, study)
        ledger.mark_queued(study)
    ledger.note_reserved(STUDY, "w1")
    ledger.note_reserved(OTHER, "w2")
    assert overdue(ledger, queue_empty=False) == []
    clock.advance(15)
    ledger.worker_heartbeat("w2", "analysis", "host", 2)  # w1 stops beating (killed)
    clock.advance(10)
    assert overdue(ledger, queue_empty=False) == [STUDY]
    assert ledger.forget_silent_workers(20) == 1
    assert [w.worker_id for w in ledger.list_workers()] == ["w2"]
    assert overdue(ledger, queue_empty=False) == [STUDY]  # a forgotten worker is not alive


def test_a_queued_job_is_lost_only_when_the_queue_is_empty_and_the_grace_is_over(
    ledger: Ledger, clock: ManualClock
) -> None:
    record(ledger, STUDY)
    ledger.mark_queued(STUDY)
    assert overdue(ledger) == []  # just sent: it may be on its way
    clock.advance(11)
    assert overdue(ledger, queue_empty=False) == []  # the broker holds jobs: wait
    assert overdue(ledger) == [STUDY]
    ledger.mark_queued(STUDY, expect=StudyState.QUEUED)  # re-sent: the grace starts again
    assert overdue(ledger) == []


def test_a_clean_worker_stop_removes_its_row(ledger: Ledger) -> None:
    ledger.worker_heartbeat("w1", "delivery", "host", 1)
    ledger.worker_stopped("w1")
    assert ledger.list_workers() == []


def test_a_destination_lease_lapses_without_its_heartbeat(
    ledger: Ledger, clock: ManualClock
) -> None:
    token = ledger.acquire_destination("PACS", 30)
    assert token is not None
    for _ in range(6):
        clock.advance(10)
        assert ledger.renew_destination("PACS", token, 30)
        assert ledger.acquire_destination("PACS", 30) is None
    clock.advance(31)
    assert ledger.acquire_destination("PACS", 30) is not None
