"""Spool retention (cxr_node.retention): finished studies' files go after the retention period,
or oldest first below the free-space watermark; nothing unfinished is ever deleted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.ledger import DeliveryState, Ledger, ManualClock, ResultRow, StudyState
from cxr_node.retention import Purger
from cxr_node.settings import load_settings
from cxr_node.spool import Spool


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: ManualClock) -> Iterator[Ledger]:
    instance = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=clock)
    yield instance
    instance.close()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def purger(tmp_path: Path, ledger: Ledger, spool: Spool, **settings: object) -> Purger:
    values = {"spool_retention_hours": 1.0, "spool_min_free_bytes": 0} | settings
    return Purger(load_settings(None, data_dir=tmp_path, **values), ledger, spool)


def study(ledger: Ledger, spool: Spool, uid: str, destinations: list[str]) -> Path:
    """A study with one image on disk, analysed, with one result file."""
    image = spool.instance_path(uid, f"{uid}.1")
    spool.write_atomically(image, [b"image"])
    record_only(ledger, spool, uid, image, destinations)
    ledger.mark_queued(uid)
    token = ledger.claim(uid, 30)
    result = spool.result_path(uid, f"{uid}.9")
    spool.write_atomically(result, [b"result"])
    ledger.record_results(
        uid, [ResultRow(f"{uid}.9", f"{uid}.1", "sr", spool.relative(result))], destinations, token
    )
    return image


def test_a_finished_study_is_purged_after_the_retention_period(
    tmp_path: Path, ledger: Ledger, spool: Spool, clock: ManualClock
) -> None:
    image = study(ledger, spool, "1.1", ["PACS"])
    pending = study(ledger, spool, "1.2", ["PACS"])
    ledger.record_delivery("1.1", "PACS", DeliveryState.DELIVERED)
    policy = purger(tmp_path, ledger, spool)
    assert policy.purge().studies == []  # finished a moment ago
    clock.advance(3601)
    dry = policy.purge(dry_run=True)
    assert [s.study_uid for s in dry.studies] == ["1.1"] and image.exists()
    report = policy.purge()
    assert [(s.study_uid, s.files, s.bytes) for s in report.studies] == [("1.1", 2, 11)]
    assert not image.exists() and not image.parent.exists()
    assert pending.exists()  # its delivery is still pending: not finished
    row = ledger.study("1.1")
    assert row is not None and row.purged_at is not None and row.state is StudyState.DELIVERED
    assert ledger.reprocess("1.1") is None  # its images are gone
    assert policy.purge().studies == []  # once


def test_zero_retention_keeps_everything(
    tmp_path: Path, ledger: Ledger, spool: Spool, clock: ManualClock
) -> None:
    image = study(ledger, spool, "1.1", [])
    clock.advance(10**9)
    assert purger(tmp_path, ledger, spool, spool_retention_hours=0).purge().studies == []
    assert image.exists()


def test_below_the_watermark_the_oldest_finished_go_first(
    tmp_path: Path,
    ledger: Ledger,
    spool: Spool,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old = study(ledger, spool, "1.1", [])
    clock.advance(10)
    new = study(ledger, spool, "1.2", [])
    unfinished = spool.instance_path("1.3", "1.3.1")
    spool.write_atomically(unfinished, [b"x"])
    record_only(ledger, spool, "1.3", unfinished)
    # free space as if this spool were alone on its disk (other tests write to the real one)
    disk = 10**9

    def free_bytes() -> int:
        return disk - sum(p.stat().st_size for p in spool.root.rglob("*") if p.is_file())

    monkeypatch.setattr(spool, "free_bytes", free_bytes)
    free = spool.free_bytes()
    # a floor that the free space is just under: the first (oldest) study is enough
    policy = purger(
        tmp_path, ledger, spool, spool_retention_hours=0, spool_min_free_bytes=(free + 6) // 2
    )
    report = policy.purge()
    assert [s.study_uid for s in report.studies] == ["1.1"]
    assert not old.exists() and new.exists() and unfinished.exists()


def record_only(
    ledger: Ledger, spool: Spool, uid: str, image: Path, destinations: list[str] | None = None
) -> None:
    """The instance is on disk and in the ledger (the study RECEIVED)."""
    ledger.record_instance(
        study_key=uid,
        study_uid=uid,
        sop_instance_uid=f"{uid}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=spool.relative(image),
        size=image.stat().st_size,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae="MODALITY",
        destinations=destinations or [],
    )


def test_a_not_analysed_study_waits_for_its_notice(
    tmp_path: Path, ledger: Ledger, spool: Spool, clock: ManualClock
) -> None:
    image = spool.instance_path("2.1", "2.1.1")
    spool.write_atomically(image, [b"x"])
    record_only(ledger, spool, "2.1", image)
    with ledger._begin() as db:  # give it a destination, as routing would
        from cxr_node.ledger.schema import studies

        db.execute(studies.update().values(destinations='["PACS"]'))
    ledger.mark_not_eligible("2.1", "BODY_PART", "not a chest")
    clock.advance(7200)
    policy = purger(tmp_path, ledger, spool)
    assert policy.purge().studies == []  # its notice is not written yet
    ledger.mark_notice_impossible("2.1", "test")
    assert [s.study_uid for s in policy.purge().studies] == ["2.1"]


def test_the_pictures_of_a_purged_study_go_with_it(
    tmp_path: Path, ledger: Ledger, spool: Spool, clock: ManualClock
) -> None:
    image = study(ledger, spool, "3.1", ["PACS"])
    pictures = image.parent / "previews" / image.stem
    pictures.mkdir(parents=True)
    (pictures / "image.png").write_bytes(b"png")
    (pictures / "heatmap-effusion.png").write_bytes(b"png")
    ledger.record_delivery("3.1", "PACS", DeliveryState.DELIVERED)
    clock.advance(3601)
    purger(tmp_path, ledger, spool).purge()
    assert not pictures.exists() and not image.parent.exists()
