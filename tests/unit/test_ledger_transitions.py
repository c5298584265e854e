"""The one transition table (cxr_node.ledger.transitions), walked whole: every allowed change
works and writes its event, every other one is refused with IllegalTransition."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cxr_node.ledger import DeliveryState, IllegalTransition, Ledger, ManualClock, StudyState
from cxr_node.ledger.schema import deliveries, events, studies
from cxr_node.ledger.transitions import (
    DELIVERY_TRANSITIONS,
    STUDY_TRANSITIONS,
    check_study_transition,
    move_delivery,
    move_study,
)

KEY = "1.2.826.0.1.3680043.8.498.42"


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    instance = Ledger(ledger_url, clock=ManualClock())
    yield instance
    instance.close()


def _put_study(ledger: Ledger, state: StudyState) -> None:
    with ledger._begin() as db:
        db.execute(studies.delete())
        db.execute(deliveries.delete())
        db.execute(
            studies.insert().values(
                study_key=KEY,
                study_uid=KEY,
                state=state,
                destinations=json.dumps(["PACS"]),
                created_at=1.0,
                updated_at=1.0,
                last_received_at=1.0,
                attempts=0,
            )
        )


def _state(ledger: Ledger) -> str:
    with ledger._begin() as db:
        return str(db.execute(sa.select(studies.c.state)).scalar_one())


PAIRS = list(itertools.product(StudyState, StudyState))


def test_the_table_names_every_state() -> None:
    assert set(STUDY_TRANSITIONS) == {None, *StudyState}
    assert set(DELIVERY_TRANSITIONS) == {None, *DeliveryState}
    for targets in STUDY_TRANSITIONS.values():
        assert targets <= set(StudyState)


def test_every_study_transition_is_allowed_or_refused_as_the_table_says(ledger: Ledger) -> None:
    for source, target in PAIRS:
        _put_study(ledger, source)
        allowed = target in STUDY_TRANSITIONS[source]
        with ledger._begin() as db:
            if allowed:
                left = move_study(db, 5.0, KEY, target, when=(source,), detail="walk")
                assert left is source, (source, target)
            else:
                with pytest.raises(IllegalTransition) as refused:
                    move_study(db, 5.0, KEY, target, when=(source,))
                assert f"{source} -> {target}" in str(refused.value)
        assert _state(ledger) == (target if allowed else source), (source, target)
        with ledger._begin() as db:
            last = db.execute(sa.select(events).order_by(events.c.id.desc())).first()
        if allowed:
            assert last is not None
            assert (last.state, last.from_state, last.detail) == (target, source, "walk")


def test_a_new_study_may_only_begin_received() -> None:
    check_study_transition(None, StudyState.RECEIVED)
    for target in set(StudyState) - {StudyState.RECEIVED}:
        with pytest.raises(IllegalTransition):
            check_study_transition(None, target)


def test_an_illegal_transition_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(IllegalTransition):
        check_study_transition(StudyState.DELIVERED, StudyState.ANALYSING)
    assert "illegal study transition: delivered -> analysing" in caplog.text


def test_a_transition_that_does_not_apply_now_is_not_an_error(ledger: Ledger) -> None:
    _put_study(ledger, StudyState.DELIVERED)
    with ledger._begin() as db:
        assert move_study(db, 5.0, KEY, StudyState.ANALYSING, when=(StudyState.QUEUED,)) is None
    assert _state(ledger) == StudyState.DELIVERED


def test_entering_a_state_stamps_its_time_and_final_states_finish(ledger: Ledger) -> None:
    _put_study(ledger, StudyState.RECEIVED)
    with ledger._begin() as db:
        move_study(db, 7.0, KEY, StudyState.QUEUED, when=(StudyState.RECEIVED,))
    row = ledger.study(KEY)
    assert row is not None and (row.queued_at, row.finished_at) == (7.0, None)
    with ledger._begin() as db:
        move_study(db, 8.0, KEY, StudyState.FAILED, when=(StudyState.QUEUED,))
    row = ledger.study(KEY)
    assert row is not None and row.finished_at == 8.0


@pytest.mark.parametrize(
    ("source", "target"), list(itertools.product(DeliveryState, DeliveryState))
)
def test_every_delivery_transition_is_allowed_or_refused_as_the_table_says(
    ledger: Ledger, source: DeliveryState, target: DeliveryState
) -> None:
    _put_study(ledger, StudyState.ANALYSED)
    with ledger._begin() as db:
        db.execute(
            deliveries.insert().values(
                study_key=KEY, destination="PACS", state=source, attempts=0, updated_at=1.0
            )
        )
    with ledger._begin() as db:
        if target in DELIVERY_TRANSITIONS[source]:
            left = move_delivery(
                db, KEY, "PACS", target, when=(source,), values={"updated_at": 2.0}
            )
            assert left is source
        else:
            with pytest.raises(IllegalTransition):
                move_delivery(db, KEY, "PACS", target, when=(source,), values={})
