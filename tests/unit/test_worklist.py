"""The worklist's reading order, ageing, filters and paging (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger, ManualClock, WorklistFilter
from tests.unit._studies import seed_study

HOUR = 3600.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def ledger(ledger_url: str, clock: ManualClock) -> Iterator[Ledger]:
    opened = Ledger(ledger_url, clock=clock)
    yield opened
    opened.close()


def _order(ledger: Ledger, wanted: WorklistFilter | None = None, **paging: int) -> list[str]:
    page = ledger.worklist(wanted or WorklistFilter(), ageing_seconds=HOUR, **paging)
    return [entry.study.study_key for entry in page.entries]


def test_critical_then_abnormal_then_the_rest_by_score_then_waiting_time(
    ledger: Ledger, clock: ManualClock
) -> None:
    seed_study(ledger, "1.1", priority=Priority.ROUTINE, score=0.3)
    clock.advance(60)
    seed_study(ledger, "1.2", priority=Priority.CRITICAL, score=0.7)
    clock.advance(60)
    seed_study(ledger, "1.3", priority=Priority.ABNORMAL, score=0.6)
    clock.advance(60)
    seed_study(ledger, "1.4", priority=Priority.CRITICAL, score=0.9)
    clock.advance(60)
    seed_study(ledger, "1.5", priority=None)  # not analysed yet: no score, last band
    clock.advance(60)
    seed_study(ledger, "1.6", priority=Priority.ROUTINE, score=0.3)  # same score, waited less
    assert _order(ledger) == ["1.4", "1.2", "1.3", "1.1", "1.6", "1.5"]


def test_a_study_waiting_past_the_ageing_time_climbs_one_band_and_says_so(
    ledger: Ledger, clock: ManualClock
) -> None:
    seed_study(ledger, "2.1", priority=Priority.ROUTINE, score=0.1)
    seed_study(ledger, "2.2", priority=Priority.CRITICAL, score=0.95)
    clock.advance(HOUR - 60)
    seed_study(ledger, "2.3", priority=Priority.ABNORMAL, score=0.8)
    assert _order(ledger) == ["2.2", "2.3", "2.1"]
    clock.advance(120)  # 2.1 and 2.2 waited over an hour
    page = ledger.worklist(WorklistFilter(), ageing_seconds=HOUR)
    got = {e.study.study_key: (e.band, e.aged) for e in page.entries}
    assert got == {"2.2": (0, False), "2.1": (1, True), "2.3": (1, False)}  # critical stays
    assert _order(ledger) == ["2.2", "2.3", "2.1"]  # in the abnormal band by score
    seed_study(ledger, "2.4", priority=Priority.ROUTINE, score=0.99)
    assert _order(ledger)[-1] == "2.4"  # a fresh routine study never passes an aged one


def test_filters_and_paging(ledger: Ledger, clock: ManualClock) -> None:
    seed_study(ledger, "3.1", priority=Priority.CRITICAL, score=0.9, accession="A100")
    clock.advance(10)
    seed_study(
        ledger, "3.2", priority=Priority.ROUTINE, calling_ae="OTHER", patient_name="SMITH^ANN"
    )
    clock.advance(10)
    seed_study(ledger, "3.3", priority=None, patient_id="X_%9")
    assert _order(ledger, WorklistFilter(priorities=["critical", "routine"])) == ["3.1", "3.2"]
    assert _order(ledger, WorklistFilter(states=["received"])) == ["3.3"]
    assert _order(ledger, WorklistFilter(calling_ae="OTHER")) == ["3.2"]
    assert _order(ledger, WorklistFilter(since=1_000_015.0)) == ["3.3"]
    assert _order(ledger, WorklistFilter(text="a10")) == ["3.1"]  # accession, any case
    assert _order(ledger, WorklistFilter(text="smith")) == ["3.2"]  # patient name
    assert _order(ledger, WorklistFilter(text="_%")) == ["3.3"]  # wildcards are literal
    assert _order(ledger, WorklistFilter(text="nobody")) == []
    page = ledger.worklist(WorklistFilter(), ageing_seconds=HOUR, limit=2, offset=1)
    assert page.total == 3 and [e.study.study_key for e in page.entries] == ["3.2", "3.3"]
    first = ledger.worklist(WorklistFilter(), ageing_seconds=HOUR, limit=1).entries[0]
    assert first.attributes is not None and first.attributes.accession_number == "A100"
