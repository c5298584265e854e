"""The ledger's schema: Alembic migrations from v0.1 and from nothing, under a lock that several
starting processes never race, and clear errors when the database cannot be used."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from cxr_node.cli import main
from cxr_node.jobs import ImageAnalysis, ModelInfo, Priority
from cxr_node.ledger import Ledger, LedgerUnavailable, ManualClock, ResultRow, StudyState
from cxr_node.ledger.engine import head_revision
from cxr_node.ledger.schema import metadata
from tests.unit._studies import findings

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ledger-v0.1.sqlite"


def analysis(sop: str, score: float, priority: Priority) -> ImageAnalysis:
    return ImageAnalysis(
        sop_instance_uid=sop,
        findings=findings(score),
        abnormality_score=score,
        priority=priority,
        model=ModelInfo(name="cxr-demo", version="0.1", demo=True, members=[], device_uid="1.2"),
    )


def test_a_v0_1_ledger_upgrades_and_keeps_every_study(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    shutil.copy(FIXTURE, path)
    ledger = Ledger(f"sqlite:///{path}", clock=ManualClock(2_000_000_000.0))
    try:
        states = {row.study_key: row.state for row in ledger.list_studies(100)}
        assert states == {
            "1.2.3.100": StudyState.RECEIVED,
            "1.2.3.101": StudyState.QUEUED,
            "1.2.3.102": StudyState.ANALYSING,
            "1.2.3.103": StudyState.ANALYSED,
            "1.2.3.104": StudyState.DELIVERED,
            "1.2.3.105": StudyState.NOT_ELIGIBLE,
            "1.2.3.106": StudyState.FAILED,
        }
        delivered = ledger.study("1.2.3.104")
        assert delivered is not None and delivered.finished_at is not None
        assert ledger.deliveries_of("1.2.3.103")["PACS"].state.value == "pending"
        assert [s.ae_title for s in ledger.list_sources()] == ["MODALITY"]
        # and it goes on working: the queued study is claimed and analysed with findings
        token = ledger.claim("1.2.3.101", 30)
        assert token is not None
        row = ResultRow("1.2.3.101.9", "1.2.3.101.1", "sr", "1.2.3.101/results/sr.dcm")
        assert ledger.record_results(
            "1.2.3.101",
            [row],
            ["PACS"],
            token,
            analyses=[analysis("1.2.3.101.1", 0.9, Priority.CRITICAL)],
        )
        analysed = ledger.study("1.2.3.101")
        assert analysed is not None
        assert (analysed.priority, analysed.abnormality_score) == ("critical", 0.9)
        assert [f.label for f in ledger.findings_of("1.2.3.101")] == ["Pneumothorax", "Effusion"]
    finally:
        ledger.close()
    with sa.create_engine(f"sqlite:///{path}").connect() as db:
        assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0008"


def test_the_schema_module_matches_what_the_migrations_build(ledger_url: str) -> None:
    Ledger(ledger_url).close()
    engine = sa.create_engine(ledger_url)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        built = {column["name"] for column in inspector.get_columns(table.name)}
        assert built == {column.name for column in table.columns}, table.name
    engine.dispose()
    assert head_revision() == "0008"


def test_findings_score_priority_and_model_are_stored_per_study(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        for sop in ("1.1", "1.2"):
            ledger.record_instance(
                study_key="9.9",
                study_uid="9.9",
                sop_instance_uid=sop,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                path=f"9.9/{sop}.dcm",
                size=10,
                eligible=True,
                reason_code=None,
                reason=None,
                calling_ae="MODALITY",
                destinations=[],
            )
        ledger.mark_queued("9.9")
        token = ledger.claim("9.9", 30)
        analyses = [
            analysis("1.1", 0.3, Priority.ABNORMAL),
            analysis("1.2", 0.2, Priority.ROUTINE),
        ]
        assert ledger.record_results("9.9", [], [], token, analyses=analyses)
        study = ledger.study("9.9")
        assert study is not None
        assert study.state is StudyState.ANALYSED
        assert study.finished_at is not None  # no destination: it rests here
        assert (study.abnormality_score, study.priority) == (0.3, "abnormal")
        assert study.model is not None and study.model["demo"] is True
        found = ledger.findings_of("9.9")
        assert len(found) == 4
        first = found[0]
        assert (first.sop_instance_uid, first.label, first.present) == (
            "1.1",
            "Pneumothorax",
            False,
        )
        assert first.code == {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax"}
    finally:
        ledger.close()


def _open(url: str) -> str:
    ledger = Ledger(url)
    ledger.close()
    return "ok"


def test_several_processes_starting_at_once_do_not_race_the_migration(ledger_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        assert pool.map(_open, [ledger_url] * 4) == ["ok"] * 4
    engine = sa.create_engine(ledger_url)
    with engine.connect() as db:
        versions = db.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert [v[0] for v in versions] == ["0008"]


def test_an_unreachable_database_is_one_line_with_the_password_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql+psycopg://cxr:s3cret@127.0.0.1:1/ledger"
    with pytest.raises(LedgerUnavailable) as failed:
        Ledger(url)
    assert "s3cret" not in str(failed.value) and "***" in str(failed.value)
    code = main(["studies", "--data-dir", str(tmp_path), "--config", str(_config(tmp_path, url))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "cannot connect" in err and "s3cret" not in err


def test_a_missing_driver_says_which_and_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "psycopg", None)
    with pytest.raises(LedgerUnavailable) as failed:
        Ledger("postgresql+psycopg://cxr:s3cret@127.0.0.1/ledger")
    message = str(failed.value)
    assert "driver missing" in message and "cxr-node[postgres]" in message
    assert "s3cret" not in message


def _config(folder: Path, url: str) -> Path:
    path = folder / "config.yaml"
    path.write_text(f"ledger_url: '{url}'\n")
    return path
