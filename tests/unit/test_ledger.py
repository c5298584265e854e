"""The study ledger (cxr_node.ledger) on SQLite: states, claims, leases, recovery, deliveries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cxr_node.ledger import DeliveryState, Ledger, ManualClock, NoticeState, ResultRow, StudyState

PACS = "PACS"
VIEWER = "VIEWER"
STUDY = "1.2.826.0.1.3680043.8.498.1"


FakeClock = ManualClock


@pytest.fixture
def url(ledger_url: str) -> str:
    return ledger_url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(url: str, clock: FakeClock) -> Iterator[Ledger]:
    instance = Ledger(url, clock=clock)
    yield instance
    instance.close()


def record(
    ledger: Ledger,
    study: str = STUDY,
    sop: str = "1.2.3.1",
    *,
    eligible: bool = True,
    reason_code: str | None = None,
    destinations: list[str] | None = None,
) -> bool:
    return ledger.record_instance(
        study_key=study,
        study_uid=study,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=f"{study}/{sop}.dcm",
        size=1234,
        eligible=eligible,
        reason_code=reason_code,
        reason=None if reason_code is None else "because",
        calling_ae="MODALITY",
        destinations=[PACS] if destinations is None else destinations,
    )


def state(ledger: Ledger, study: str = STUDY) -> StudyState:
    row = ledger.study(study)
    assert row is not None
    return row.state


def result_row(sop: str = "1.2.3.99") -> ResultRow:
    return ResultRow(
        sop_instance_uid=sop, source_sop_instance_uid="1.2.3.1", kind="sr", path=f"r/{sop}.dcm"
    )


def pending(ledger: Ledger, study: str = STUDY) -> list[str]:
    return sorted(
        name
        for name, row in ledger.deliveries_of(study).items()
        if row.state is DeliveryState.PENDING
    )


def analysed(ledger: Ledger, destinations: list[str], study: str = STUDY) -> None:
    """Bring a recorded study to ANALYSED."""
    ledger.mark_queued(study)
    assert ledger.claim(study, lease_seconds=60)
    ledger.record_results(study, [result_row()], destinations)


# --- the normal path --------------------------------------------------------------------------


def test_state_machine_received_to_delivered(ledger: Ledger) -> None:
    assert record(ledger) is True
    row = ledger.study(STUDY)
    assert row is not None
    assert row.state is StudyState.RECEIVED
    assert row.destinations == [PACS]
    assert row.attempts == 0

    ledger.mark_queued(STUDY)
    assert state(ledger) is StudyState.QUEUED

    assert ledger.claim(STUDY, lease_seconds=60) is not None
    row = ledger.study(STUDY)
    assert row is not None
    assert row.state is StudyState.ANALYSING
    assert row.attempts == 1

    ledger.record_results(STUDY, [result_row("1.2.3.98"), result_row("1.2.3.99")], [PACS])
    assert state(ledger) is StudyState.ANALYSED
    assert pending(ledger) == [PACS]
    assert {r.sop_instance_uid for r in ledger.results_of(STUDY)} == {"1.2.3.98", "1.2.3.99"}

    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert state(ledger) is StudyState.DELIVERED
    assert pending(ledger) == []
    delivery = ledger.deliveries_of(STUDY)[PACS]
    assert (delivery.state, delivery.attempts, delivery.last_error) == (
        DeliveryState.DELIVERED,
        1,
        None,
    )


def test_instances_are_listed_with_their_eligibility(ledger: Ledger) -> None:
    record(ledger, sop="1.2.3.1")
    record(ledger, sop="1.2.3.2", eligible=False, reason_code="LATERAL_VIEW")
    rows = {row.sop_instance_uid: row for row in ledger.instances_of(STUDY)}
    assert rows["1.2.3.1"].eligible is True and rows["1.2.3.1"].reason_code is None
    assert rows["1.2.3.2"].eligible is False and rows["1.2.3.2"].reason_code == "LATERAL_VIEW"
    assert rows["1.2.3.2"].path == f"{STUDY}/1.2.3.2.dcm"


def test_mark_not_eligible_records_the_reason(ledger: Ledger) -> None:
    record(ledger, eligible=False, reason_code="BODY_PART")
    ledger.mark_not_eligible(STUDY, "BODY_PART", "body part examined is not the chest")
    row = ledger.study(STUDY)
    assert row is not None
    assert (row.state, row.reason_code) == (StudyState.NOT_ELIGIBLE, "BODY_PART")


def test_mark_failed_records_the_reason(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    assert ledger.claim(STUDY, 60)
    ledger.mark_failed(STUDY, "UNDECODABLE", "pixel data cannot be decoded")
    row = ledger.study(STUDY)
    assert row is not None
    assert (row.state, row.reason_code, row.reason) == (
        StudyState.FAILED,
        "UNDECODABLE",
        "pixel data cannot be decoded",
    )
    assert ledger.claim(STUDY, 60) is None  # a permanent failure is not claimed again


# --- claims and leases ------------------------------------------------------------------------


def test_claim_is_exclusive(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    assert ledger.claim(STUDY, lease_seconds=60) is not None
    assert ledger.claim(STUDY, lease_seconds=60) is None
    row = ledger.study(STUDY)
    assert row is not None
    assert row.attempts == 1


def test_claim_needs_a_queued_study(ledger: Ledger) -> None:
    record(ledger)
    assert ledger.claim(STUDY, 60) is None  # still RECEIVED: not assembled yet
    assert ledger.claim("1.9.9.9", 60) is None  # unknown study
    assert state(ledger) is StudyState.RECEIVED


def test_lease_expired_analysing_study_can_be_claimed_again(
    ledger: Ledger, clock: FakeClock
) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    assert ledger.claim(STUDY, lease_seconds=30)
    clock.advance(29)
    assert ledger.claim(STUDY, lease_seconds=30) is None  # lease still held
    clock.advance(2)
    assert ledger.claim(STUDY, lease_seconds=30) is not None  # the first worker died
    row = ledger.study(STUDY)
    assert row is not None
    assert (row.state, row.attempts) == (StudyState.ANALYSING, 2)


def test_claim_is_exclusive_across_two_ledger_objects(
    url: str, ledger: Ledger, clock: FakeClock
) -> None:
    other = Ledger(url, clock=clock)
    try:
        record(ledger)
        ledger.mark_queued(STUDY)
        assert other.claim(STUDY, 60) is not None
        assert ledger.claim(STUDY, 60) is None
    finally:
        other.close()


# --- instances arriving again or late ---------------------------------------------------------


def test_duplicate_instance_returns_false_and_does_not_reset_the_study(
    ledger: Ledger, clock: FakeClock
) -> None:
    assert record(ledger) is True
    ledger.mark_queued(STUDY)
    before = ledger.study(STUDY)
    clock.advance(5)
    assert record(ledger) is False
    after = ledger.study(STUDY)
    assert after is not None and before is not None
    assert after.state is StudyState.QUEUED
    assert after.last_received_at == before.last_received_at
    assert len(ledger.instances_of(STUDY)) == 1


def test_duplicate_instance_of_a_delivered_study_keeps_it_delivered(ledger: Ledger) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert record(ledger) is False
    assert state(ledger) is StudyState.DELIVERED


@pytest.mark.parametrize("final", ["delivered", "not_eligible", "failed"])
def test_new_instance_in_a_finished_study_sends_it_back_to_received(
    ledger: Ledger, final: str
) -> None:
    record(ledger)
    if final == "delivered":
        analysed(ledger, [PACS])
        ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    elif final == "not_eligible":
        ledger.mark_not_eligible(STUDY, "BODY_PART", "not chest")
    else:
        ledger.mark_queued(STUDY)
        ledger.mark_failed(STUDY, "UNDECODABLE", "broken", ledger.claim(STUDY, 60))
    assert state(ledger) == StudyState(final)

    assert record(ledger, sop="1.2.3.2") is True
    row = ledger.study(STUDY)
    assert row is not None
    assert row.state is StudyState.RECEIVED
    assert row.reason_code is None and row.reason is None
    assert len(ledger.instances_of(STUDY)) == 2


def test_instance_arriving_during_analysis_is_analysed_later(
    ledger: Ledger, clock: FakeClock
) -> None:
    record(ledger, sop="1.2.3.1")
    ledger.mark_queued(STUDY)
    assert ledger.claim(STUDY, 60)  # the job carries only 1.2.3.1
    clock.advance(1)
    assert record(ledger, sop="1.2.3.2") is True
    ledger.record_results(STUDY, [result_row()], [PACS])
    clock.advance(10)
    # the study must come round again, so that the late image gets its own analysis
    assert STUDY in ledger.studies_quiet_since(2.0)


def test_delivery_of_old_results_does_not_finish_a_study_that_got_a_new_instance(
    ledger: Ledger,
) -> None:
    record(ledger, sop="1.2.3.1")
    analysed(ledger, [PACS])
    assert record(ledger, sop="1.2.3.2") is True
    assert state(ledger) is StudyState.RECEIVED
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert state(ledger) is StudyState.RECEIVED


# --- assembly and recovery queries ------------------------------------------------------------


def test_studies_quiet_since_respects_the_quiet_period(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger, study="1.1")
    clock.advance(1.5)
    record(ledger, study="1.2")
    assert ledger.studies_quiet_since(2.0) == []
    clock.advance(0.5)
    assert ledger.studies_quiet_since(2.0) == ["1.1"]  # 2.0 s since its last instance
    clock.advance(1.0)
    record(ledger, study="1.1", sop="1.2.3.2")  # a new image restarts its quiet period
    assert ledger.studies_quiet_since(2.0) == []
    clock.advance(1.0)
    assert ledger.studies_quiet_since(2.0) == ["1.2"]
    clock.advance(1.0)
    assert sorted(ledger.studies_quiet_since(2.0)) == ["1.1", "1.2"]


def test_studies_quiet_since_only_lists_received_studies(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger, study="1.1")
    record(ledger, study="1.2")
    ledger.mark_queued("1.2")
    clock.advance(10)
    assert ledger.studies_quiet_since(2.0) == ["1.1"]


def test_stale_studies_at_start_returns_queued_and_analysing(
    ledger: Ledger, clock: FakeClock
) -> None:
    for study in ("1.1", "1.2", "1.3", "1.4"):
        record(ledger, study=study)
    ledger.mark_queued("1.2")
    ledger.mark_queued("1.3")
    assert ledger.claim("1.3", lease_seconds=600)  # lease still valid
    ledger.mark_queued("1.4")
    assert ledger.claim("1.4", 600)
    ledger.record_results("1.4", [result_row()], [])  # delivered: nothing to recover
    stale = {
        row.study_key: row.state
        for row in ledger.stale_studies(queued_older_than=0.0, all_analysing=True)
    }
    assert stale == {"1.2": StudyState.QUEUED, "1.3": StudyState.ANALYSING}


def test_stale_studies_later_only_old_queued_and_expired_leases(
    ledger: Ledger, clock: FakeClock
) -> None:
    for study in ("1.1", "1.2"):
        record(ledger, study=study)
        ledger.mark_queued(study)
    assert ledger.claim("1.2", lease_seconds=100)
    clock.advance(50)
    assert ledger.stale_studies(queued_older_than=300.0, all_analysing=False) == []
    clock.advance(60)  # 110 s: lease of 1.2 expired, 1.1 queued for only 110 s
    assert [
        r.study_key for r in ledger.stale_studies(queued_older_than=300.0, all_analysing=False)
    ] == ["1.2"]
    clock.advance(200)  # 310 s: 1.1 has waited in the queue too long
    assert sorted(
        r.study_key for r in ledger.stale_studies(queued_older_than=300.0, all_analysing=False)
    ) == [
        "1.1",
        "1.2",
    ]


# --- deliveries -------------------------------------------------------------------------------


def test_failed_delivery_fails_the_study_with_delivery_failed(ledger: Ledger) -> None:
    record(ledger, destinations=[PACS, VIEWER])
    analysed(ledger, [PACS, VIEWER])
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert state(ledger) is StudyState.ANALYSED  # VIEWER still pending
    ledger.record_delivery(STUDY, VIEWER, DeliveryState.FAILED, "0xA700 from VIEWER")
    row = ledger.study(STUDY)
    assert row is not None
    assert row.state is StudyState.FAILED
    assert row.reason_code == "DELIVERY_FAILED"
    assert row.reason == "0xA700 from VIEWER"
    deliveries = ledger.deliveries_of(STUDY)
    assert deliveries[PACS].state is DeliveryState.DELIVERED
    viewer = deliveries[VIEWER]
    assert (viewer.state, viewer.attempts, viewer.last_error) == (
        DeliveryState.FAILED,
        1,
        "0xA700 from VIEWER",
    )


def test_pending_delivery_attempts_are_counted(ledger: Ledger) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    ledger.record_delivery(STUDY, PACS, DeliveryState.PENDING, "association refused")
    ledger.record_delivery(STUDY, PACS, DeliveryState.PENDING, "association refused")
    assert state(ledger) is StudyState.ANALYSED
    row = ledger.deliveries_of(STUDY)[PACS]
    assert (row.state, row.attempts, row.last_error) == (
        DeliveryState.PENDING,
        2,
        "association refused",
    )


def test_study_without_destinations_rests_in_analysed(ledger: Ledger) -> None:
    record(ledger, destinations=[])
    analysed(ledger, [])
    assert state(ledger) is StudyState.ANALYSED
    assert ledger.destinations_due() == []
    assert ledger.deliveries_of(STUDY) == {}


def test_recording_results_twice_keeps_one_row_per_result(ledger: Ledger) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    ledger.record_results(STUDY, [result_row()], [PACS])
    assert len(ledger.results_of(STUDY)) == 1
    assert pending(ledger) == [PACS]


# --- several processes on one file ------------------------------------------------------------


def test_two_ledgers_on_one_file_see_each_others_writes(
    url: str, ledger: Ledger, clock: FakeClock
) -> None:
    other = Ledger(url, clock=clock)
    try:
        record(ledger)
        seen = other.study(STUDY)
        assert seen is not None and seen.state is StudyState.RECEIVED
        other.mark_queued(STUDY)
        assert state(ledger) is StudyState.QUEUED
        assert record(other, sop="1.2.3.2") is True
        assert record(ledger, sop="1.2.3.2") is False  # the other one already has it
        assert len(ledger.instances_of(STUDY)) == 2
    finally:
        other.close()


def test_ledger_survives_reopening(url: str, clock: FakeClock) -> None:
    first = Ledger(url, clock=clock)
    record(first)
    first.mark_queued(STUDY)
    first.close()
    second = Ledger(url, clock=clock)
    try:
        assert state(second) is StudyState.QUEUED
        assert second.study(STUDY) is not None
    finally:
        second.close()


def test_list_studies_most_recent_first(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger, study="1.1")
    clock.advance(1)
    record(ledger, study="1.2")
    clock.advance(1)
    ledger.mark_queued("1.1")
    assert [row.study_key for row in ledger.list_studies()] == ["1.1", "1.2"]
    assert [row.study_key for row in ledger.list_studies(limit=1)] == ["1.1"]


def test_concurrent_duplicate_instance_is_reported_as_known(
    url: str, ledger: Ledger, clock: FakeClock
) -> None:
    other = Ledger(url, clock=clock)
    raced: list[bool] = []

    def other_store_first(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO INSTANCES") and not raced:
            raced.append(record(other))  # lands between our SELECT and our INSERT

    sa.event.listen(ledger._engine, "before_cursor_execute", other_store_first)
    try:
        assert record(ledger) is False
        assert raced == [True]
        assert len(ledger.instances_of(STUDY)) == 1
    finally:
        sa.event.remove(ledger._engine, "before_cursor_execute", other_store_first)
        other.close()


# --- claim ownership, attempts and release --------------------------------------------------


def test_stale_worker_cannot_record_after_another_claimed(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    first = ledger.claim(STUDY, 60)
    assert first == 1
    clock.advance(61)  # the first worker's lease expired (it hung, say)
    second = ledger.claim(STUDY, 60)
    assert second == 2
    assert ledger.record_results(STUDY, [result_row()], [PACS], token=first) is False
    assert ledger.mark_failed(STUDY, "UNDECODABLE", "late", token=first) is False
    assert state(ledger) is StudyState.ANALYSING
    assert ledger.record_results(STUDY, [result_row()], [PACS], token=second) is True
    assert state(ledger) is StudyState.ANALYSED


def test_study_fails_after_too_many_lost_attempts(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    for _ in range(3):
        assert ledger.claim(STUDY, 60, max_attempts=3) is not None
        clock.advance(61)  # each attempt is lost (the worker crashed)
    assert ledger.claim(STUDY, 60, max_attempts=3) is None
    row = ledger.study(STUDY)
    assert row is not None
    assert row.state is StudyState.FAILED
    assert row.reason_code == "TOO_MANY_ATTEMPTS"


def test_release_gives_the_study_back_to_the_queue(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    token = ledger.claim(STUDY, 60)
    assert token is not None
    assert ledger.release(STUDY, token + 1) is False
    assert ledger.release(STUDY, token) is True
    assert state(ledger) is StudyState.QUEUED
    assert ledger.claim(STUDY, 60) == token + 1


def test_recovery_does_not_requeue_a_study_that_moved_on(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    assert ledger.claim(STUDY, 60)
    # recovery read the study as QUEUED a moment ago; a worker has claimed it since
    assert ledger.mark_queued(STUDY, expect=StudyState.QUEUED) is False
    assert state(ledger) is StudyState.ANALYSING


# --- delivery scheduling: leases, backoff, due destinations ------------------------------------


def test_one_lease_per_destination(ledger: Ledger, clock: FakeClock) -> None:
    first = ledger.acquire_destination(PACS, 60)
    assert first is not None
    assert ledger.acquire_destination(PACS, 60) is None
    assert ledger.acquire_destination(VIEWER, 60) is not None  # another destination is free
    clock.advance(30)
    assert ledger.renew_destination(PACS, first, 60) is True
    clock.advance(45)  # 75 s after taking it, 45 s after renewing: still held
    assert ledger.acquire_destination(PACS, 60) is None
    ledger.release_destination(PACS, first)
    second = ledger.acquire_destination(PACS, 60)
    assert second is not None and second != first
    assert ledger.renew_destination(PACS, first, 60) is False  # the old holder lost it


def test_an_expired_lease_can_be_taken(ledger: Ledger, clock: FakeClock) -> None:
    assert ledger.acquire_destination(PACS, 60) is not None
    clock.advance(61)
    assert ledger.acquire_destination(PACS, 60) is not None


def test_due_deliveries_and_destinations_due(ledger: Ledger, clock: FakeClock) -> None:
    record(ledger, destinations=[PACS, VIEWER])
    analysed(ledger, [PACS, VIEWER])
    assert [r.study_key for r in ledger.due_deliveries(PACS)] == [STUDY]
    assert ledger.destinations_due() == [PACS, VIEWER]
    token = ledger.acquire_destination(PACS, 60)
    assert token is not None
    assert ledger.destinations_due() == [VIEWER]  # a task holds PACS: no need to wake it


def test_deferring_a_destination_delays_its_old_and_new_deliveries(
    ledger: Ledger, clock: FakeClock
) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    assert ledger.acquire_destination(PACS, 60) is not None
    assert ledger.note_destination_outcome(PACS, reachable=False) == 1
    assert ledger.note_destination_outcome(PACS, reachable=False) == 2
    ledger.defer_destination(PACS, clock.now() + 8, "connection refused")
    assert ledger.due_deliveries(PACS) == []
    assert ledger.next_delivery_at(PACS) == clock.now() + 8
    record(ledger, study="1.9")
    analysed(ledger, [PACS], study="1.9")  # a new study while PACS is down waits too
    assert ledger.deliveries_of("1.9")[PACS].next_attempt_at == clock.now() + 8
    assert ledger.deliveries_of(STUDY)[PACS].last_error == "connection refused"
    clock.advance(8)
    assert sorted(r.study_key for r in ledger.due_deliveries(PACS)) == sorted(["1.9", STUDY])
    assert ledger.note_destination_outcome(PACS, reachable=True) == 0


def test_a_retry_time_survives_reopening_the_ledger(url: str, clock: FakeClock) -> None:
    first = Ledger(url, clock=clock)
    record(first)
    analysed(first, [PACS])
    first.record_delivery(STUDY, PACS, DeliveryState.PENDING, "down", clock.now() + 30)
    first.close()
    second = Ledger(url, clock=clock)
    try:
        assert second.due_deliveries(PACS) == []
        assert second.next_delivery_at(PACS) == clock.now() + 30
        clock.advance(30)
        assert second.destinations_due() == [PACS]
    finally:
        second.close()


def test_release_all_destination_leases(ledger: Ledger) -> None:
    assert ledger.acquire_destination(PACS, 600) is not None
    ledger.release_all_destination_leases()
    assert ledger.acquire_destination(PACS, 600) is not None


# --- "not analysed" notices ---------------------------------------------------------------------


def notice_row() -> ResultRow:
    return ResultRow(
        sop_instance_uid="1.2.3.77", source_sop_instance_uid="1.2.3.1", kind="notice", path="n"
    )


def test_a_not_eligible_study_needs_a_notice_once(ledger: Ledger) -> None:
    record(ledger, eligible=False, reason_code="LATERAL_VIEW")
    ledger.mark_not_eligible(STUDY, "LATERAL_VIEW", "lateral")
    assert ledger.studies_needing_notice() == [STUDY]
    assert ledger.record_notice(STUDY, notice_row()) is True
    assert ledger.record_notice(STUDY, notice_row()) is False
    assert ledger.studies_needing_notice() == []
    assert pending(ledger) == [PACS]
    row = ledger.study(STUDY)
    assert row is not None and row.notice_state == NoticeState.WRITTEN
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert state(ledger) is StudyState.NOT_ELIGIBLE  # the reason stays what it was


def test_no_notice_without_destinations_or_for_analysed_studies(ledger: Ledger) -> None:
    record(ledger, study="1.1", eligible=False, reason_code="LATERAL_VIEW", destinations=[])
    ledger.mark_not_eligible("1.1", "LATERAL_VIEW", "lateral")
    record(ledger, study="1.2")
    analysed(ledger, [PACS], study="1.2")
    assert ledger.studies_needing_notice() == []
    assert ledger.record_notice("1.2", notice_row()) is False


def test_an_impossible_notice_is_not_asked_for_again(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    token = ledger.claim(STUDY, 60)
    ledger.mark_failed(STUDY, "UNDECODABLE", "broken", token)
    assert ledger.studies_needing_notice() == [STUDY]
    ledger.mark_notice_impossible(STUDY, "no readable instance")
    assert ledger.studies_needing_notice() == []


def test_results_supersede_an_earlier_notice(ledger: Ledger) -> None:
    record(ledger, eligible=False, reason_code="LATERAL_VIEW")
    ledger.mark_not_eligible(STUDY, "LATERAL_VIEW", "lateral")
    ledger.record_notice(STUDY, notice_row())
    record(ledger, sop="1.2.3.2")  # a frontal image arrives later
    analysed(ledger, [PACS])
    assert [r.kind for r in ledger.results_of(STUDY)] == ["sr"]
    row = ledger.study(STUDY)
    assert row is not None and row.notice_state is None


def test_a_ledger_from_an_older_version_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as db:
        db.execute(
            sa.text(
                "CREATE TABLE deliveries (study_key VARCHAR(80), destination VARCHAR(120), "
                "state VARCHAR(20) NOT NULL, attempts INTEGER NOT NULL, last_error TEXT, "
                "updated_at FLOAT NOT NULL, PRIMARY KEY (study_key, destination))"
            )
        )
    engine.dispose()
    upgraded = Ledger(f"sqlite:///{path}")
    try:
        assert upgraded.due_deliveries(PACS) == []
    finally:
        upgraded.close()


# --- duplicates and reprocessing ----------------------------------------------------------------


def test_a_resent_instance_with_the_same_content_is_not_news(ledger: Ledger) -> None:
    assert ledger.record_instance(**_instance_args(sha256="aa")) is True
    assert ledger.instance_digest(STUDY, "1.2.3.1") == "aa"
    assert ledger.record_instance(**_instance_args(sha256="aa")) is False
    assert ledger.instance_digest(STUDY, "1.2.3.9") is None


def test_a_resent_instance_with_new_content_reopens_its_study(ledger: Ledger) -> None:
    ledger.record_instance(**_instance_args(sha256="aa"))
    analysed(ledger, [PACS])
    assert ledger.record_instance(**_instance_args(sha256="bb")) is True
    assert state(ledger) is StudyState.RECEIVED
    assert ledger.instance_digest(STUDY, "1.2.3.1") == "bb"
    assert len(ledger.instances_of(STUDY)) == 1


def test_reprocess_sends_a_finished_study_back_to_assembly(ledger: Ledger) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED)
    assert ledger.reprocess(STUDY) is StudyState.DELIVERED
    assert state(ledger) is StudyState.RECEIVED
    assert ledger.studies_quiet_since(3600.0) == [STUDY]  # assembled without waiting
    assert ledger.study(STUDY).attempts == 0  # type: ignore[union-attr]
    assert ledger.reprocess("1.2.999") is None


def test_reprocess_refuses_a_study_being_analysed(ledger: Ledger) -> None:
    record(ledger)
    ledger.mark_queued(STUDY)
    assert ledger.reprocess(STUDY) is None
    assert ledger.claim(STUDY, 60)
    assert ledger.reprocess(STUDY) is None


def _instance_args(sha256: str) -> dict[str, object]:
    return {
        "study_key": STUDY,
        "study_uid": STUDY,
        "sop_instance_uid": "1.2.3.1",
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1",
        "path": f"{STUDY}/1.2.3.1.dcm",
        "size": 1234,
        "eligible": True,
        "reason_code": None,
        "reason": None,
        "calling_ae": "MODALITY",
        "destinations": [PACS],
        "sha256": sha256,
    }


def test_a_delivery_reopened_meanwhile_is_not_marked_by_an_older_attempt(
    ledger: Ledger, clock: FakeClock
) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    opened = ledger.deliveries_of(STUDY)[PACS].created_at
    clock.advance(5)
    record(ledger, sop="1.2.3.2")  # a new image: analysed again, the delivery reopened
    analysed(ledger, [PACS])
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED, opened_at=opened)
    assert ledger.deliveries_of(STUDY)[PACS].state is DeliveryState.PENDING
    assert state(ledger) is StudyState.ANALYSED
    current = ledger.deliveries_of(STUDY)[PACS].created_at
    ledger.record_delivery(STUDY, PACS, DeliveryState.DELIVERED, opened_at=current)
    assert state(ledger) is StudyState.DELIVERED


def test_down_since_is_kept_until_the_destination_answers(ledger: Ledger, clock: FakeClock) -> None:
    assert ledger.acquire_destination(PACS, 60) is not None
    assert ledger.note_destination_failure(PACS) == (1, clock.now())
    start = clock.now()
    clock.advance(100)
    assert ledger.note_destination_failure(PACS) == (2, start)
    ledger.note_destination_outcome(PACS, reachable=True)
    assert ledger.note_destination_failure(PACS) == (1, clock.now())


def test_acknowledged_instances_are_remembered_until_the_delivery_is_reopened(
    ledger: Ledger, clock: FakeClock
) -> None:
    record(ledger)
    analysed(ledger, [PACS])
    opened = ledger.deliveries_of(STUDY)[PACS].created_at
    ledger.record_instance_sent(STUDY, PACS, "1.2.3.99", opened_at=opened)
    ledger.record_instance_sent(STUDY, PACS, "1.2.3.99", opened_at=opened)  # once is enough
    ledger.record_instance_sent(STUDY, PACS, "1.2.3.98", opened_at=opened - 1)  # another opening
    (due,) = ledger.due_deliveries(PACS)
    assert due.sent_instances == {"1.2.3.99"}
    clock.advance(5)
    record(ledger, sop="1.2.3.2")  # a new image: analysed again, the delivery reopened
    analysed(ledger, [PACS])
    (due,) = ledger.due_deliveries(PACS)
    assert due.sent_instances == frozenset()  # the new results all go out
    ledger.record_instance_sent(STUDY, PACS, "1.2.3.99", opened_at=opened)  # the older attempt
    assert ledger.due_deliveries(PACS)[0].sent_instances == frozenset()
