"""Shadow mode (issue 14): studies are analysed and recorded (findings and score in the ledger),
their results (and "not analysed" notices) go only to the destinations marked ``shadow: true``,
or nowhere; the study is marked shadow. With ``shadow_mode`` off, routing is as before."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.destinations import Destination, Router, SourceRule
from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger, ManualClock, ResultRow, StudyState
from cxr_node.settings import load_settings
from tests.unit._studies import CHEST, seed_study

CONFIG = """
shadow_mode: {shadow_mode}
destinations:
  - PACS@pacs.local:104
  - {{name: validation, ae_title: VALIDATION, host: val.local, port: 11112, shadow: true}}
  - VIEWER@viewer.local:11112
sources:
  - {{ae_title: ER_CR, destinations: [PACS, validation]}}
  - {{ae_title: WARD_DX, destinations: [VIEWER]}}
"""
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger-v0.1.sqlite"


def _router(tmp_path: Path, shadow_mode: bool, managed: list[SourceRule] | None = None) -> Router:
    config = tmp_path / "node.yaml"
    config.write_text(CONFIG.format(shadow_mode=str(shadow_mode).lower()))
    settings = load_settings(config)
    assert settings.shadow_mode is shadow_mode
    return Router(
        settings.destinations,
        settings.sources,
        settings.default_destinations,
        managed_sources=None if managed is None else lambda: managed,
        refresh_seconds=0.0,
        shadow_mode=settings.shadow_mode,
    )


def test_shadow_mode_is_off_by_default_and_destinations_are_not_shadow() -> None:
    settings = load_settings(destinations=["PACS@pacs:104"])
    assert settings.shadow_mode is False
    assert settings.destinations[0].shadow is False
    marked = Destination.model_validate(
        {"name": "val", "ae_title": "VAL", "host": "v", "port": 104, "shadow": True}
    )
    assert marked.shadow is True


def test_without_shadow_mode_routing_is_as_before(tmp_path: Path) -> None:
    router = _router(tmp_path, shadow_mode=False)
    assert router.shadow_mode is False
    assert router.destinations_for("ER_CR") == ["PACS", "validation"]
    assert router.destinations_for("WARD_DX") == ["VIEWER"]
    assert router.destinations_for("UNKNOWN") == ["PACS", "validation", "VIEWER"]


def test_in_shadow_mode_only_destinations_marked_shadow_receive_results(tmp_path: Path) -> None:
    router = _router(tmp_path, shadow_mode=True)
    assert router.shadow_mode is True
    assert router.destinations_for("ER_CR") == ["validation"]  # the rule's, shadow ones only
    assert router.destinations_for("WARD_DX") == []  # none marked: nowhere
    assert router.destinations_for("UNKNOWN") == ["validation"]  # the default list's


def test_in_shadow_mode_sources_added_at_run_time_are_filtered_too(tmp_path: Path) -> None:
    managed = [SourceRule(ae_title="CT_ROOM", destinations=["VIEWER", "validation"])]
    router = _router(tmp_path, shadow_mode=True, managed=managed)
    assert router.destinations_for("CT_ROOM") == ["validation"]


def test_the_existing_constructor_still_works_without_shadow_arguments() -> None:
    settings = load_settings(destinations=["A@a:104", "B@b:104"])
    router = Router(settings.destinations, settings.sources, settings.default_destinations)
    assert router.shadow_mode is False and router.destinations_for("ANY") == ["A", "B"]


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger(ledger_url, clock=ManualClock(2_000_000.0))
    yield opened
    opened.close()


def _receive(ledger: Ledger, key: str, sop: str, destinations: list[str], shadow: bool) -> None:
    ledger.record_instance(
        study_key=key,
        study_uid=key,
        sop_instance_uid=sop,
        sop_class_uid=CHEST,
        path=f"{key}/{sop}.dcm",
        size=10,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae="ER_CR",
        destinations=destinations,
        shadow=shadow,
    )


def test_a_study_is_marked_shadow_by_its_first_instance(ledger: Ledger) -> None:
    _receive(ledger, "7.1", "7.1.1", [], shadow=True)
    _receive(ledger, "7.1", "7.1.2", [], shadow=False)  # the mode changed meanwhile: kept
    _receive(ledger, "7.2", "7.2.1", [], shadow=False)
    first, second = ledger.study("7.1"), ledger.study("7.2")
    assert first is not None and first.shadow is True
    assert second is not None and second.shadow is False


def test_in_shadow_mode_results_are_recorded_and_go_only_to_shadow_destinations(
    ledger: Ledger, tmp_path: Path
) -> None:
    router = _router(tmp_path, shadow_mode=True)
    seed_study(
        ledger,
        "8.1",
        priority=Priority.CRITICAL,
        score=0.9,
        destinations=router.destinations_for("ER_CR"),
        shadow=router.shadow_mode,
    )
    study = ledger.study("8.1")
    assert study is not None and study.shadow is True
    assert study.state is StudyState.ANALYSED
    assert (study.abnormality_score, study.priority) == (0.9, "critical")
    assert {f.label for f in ledger.findings_of("8.1")} == {"Pneumothorax", "Effusion"}
    assert set(ledger.deliveries_of("8.1")) == {"validation"}


def test_in_shadow_mode_without_shadow_destinations_nothing_is_delivered(
    ledger: Ledger, tmp_path: Path
) -> None:
    router = _router(tmp_path, shadow_mode=True)
    seed_study(
        ledger,
        "8.2",
        priority=Priority.ABNORMAL,
        score=0.6,
        destinations=router.destinations_for("WARD_DX"),
        shadow=True,
    )
    study = ledger.study("8.2")
    assert study is not None and study.shadow is True
    assert study.state is StudyState.ANALYSED and study.finished_at is not None  # rests here
    assert ledger.deliveries_of("8.2") == {}
    assert len(ledger.findings_of("8.2")) == 2  # recorded all the same


def test_the_not_analysed_notice_follows_the_shadow_routes(ledger: Ledger, tmp_path: Path) -> None:
    router = _router(tmp_path, shadow_mode=True)
    _receive(ledger, "9.1", "9.1.1", router.destinations_for("ER_CR"), shadow=True)
    _receive(ledger, "9.2", "9.2.1", router.destinations_for("WARD_DX"), shadow=True)
    for key in ("9.1", "9.2"):
        ledger.mark_not_eligible(key, "BODY_PART", "body part examined is not the chest")
    assert ledger.studies_needing_notice() == ["9.1"]  # 9.2 has nowhere to go
    notice = ResultRow("9.1.99", "9.1.1", "notice", "9.1/results/notice.dcm")
    assert ledger.record_notice("9.1", notice)
    assert set(ledger.deliveries_of("9.1")) == {"validation"}


def test_without_shadow_mode_results_go_to_every_routed_destination(
    ledger: Ledger, tmp_path: Path
) -> None:
    router = _router(tmp_path, shadow_mode=False)
    seed_study(
        ledger,
        "8.3",
        priority=Priority.ROUTINE,
        destinations=router.destinations_for("ER_CR"),
        shadow=router.shadow_mode,
    )
    study = ledger.study("8.3")
    assert study is not None and study.shadow is False
    assert set(ledger.deliveries_of("8.3")) == {"PACS", "validation"}


def test_studies_from_before_the_shadow_column_are_not_shadow(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    shutil.copy(FIXTURE, path)
    ledger = Ledger(f"sqlite:///{path}", clock=ManualClock(2_000_000_000.0))
    try:
        studies = ledger.list_studies(100)
        assert studies and all(study.shadow is False for study in studies)
    finally:
        ledger.close()
