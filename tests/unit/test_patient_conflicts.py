"""Patient conflicts shown to operators (issue 12): what the ledger records per refused instance
(no patient data), the read model's queries, migration 0003, and ``cxr-node conflicts``, the
conflict count of ``studies`` and the conflict lines of ``status`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from cxr_node.cli import main
from cxr_node.ledger import Ledger, ManualClock, PatientConflictRow
from cxr_node.ledger.engine import _config
from cxr_node.ledger.rows import PatientConflict, StudyAttributes
from cxr_node.reports import parse_since

CR = "1.2.840.10008.5.1.4.1.1.1"
A = StudyAttributes(
    patient_id="PID-ALPHA",
    patient_name="ALPHA^ANNA",
    patient_birth_date="19700101",
    accession_number="ACC-ALPHA",
)
B = StudyAttributes(
    patient_id="PID-BETA",
    patient_name="BETA^BERT",
    patient_birth_date="19800202",
    accession_number="ACC-BETA",
)
PATIENT_VALUES = ("PID-", "ALPHA", "BETA", "19700101", "19800202", "ACC-")


def record(
    ledger: Ledger,
    study: str,
    sop: str,
    attributes: StudyAttributes,
    calling_ae: str = "MODALITY",
) -> Any:
    return ledger.record_instance(
        study_key=study,
        study_uid=study,
        sop_instance_uid=sop,
        sop_class_uid=CR,
        path=f"{study}/{sop}.dcm",
        size=10,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae=calling_ae,
        destinations=[],
        sha256=sop,
        attributes=attributes,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_800_000_000.0)


@pytest.fixture
def ledger(ledger_url: str, clock: ManualClock) -> Iterator[Ledger]:
    instance = Ledger(ledger_url, clock=clock)
    yield instance
    instance.close()


def three_conflicts(ledger: Ledger, clock: ManualClock) -> None:
    """Study 1.2.9 (patient A, from WARD_CR) refuses: another patient's image in it (100 s
    later, from ER_DX), an image of another study with one of its SOP Instance UIDs (200 s,
    checked ahead by the handler, from ER_DX), and a legacy conflict that names nothing (300 s)."""
    assert record(ledger, "1.2.9", "1.2.9.1", A, "WARD_CR") is True
    clock.advance(100)
    refused = record(ledger, "1.2.9", "1.2.9.2", B, "ER_DX")
    assert refused == PatientConflict(study_key="1.2.9", known_as="Study Instance")
    clock.advance(100)
    ahead = ledger.patient_conflict("1.2.7", "1.2.9.1", B, calling_ae="ER_DX")
    assert ahead == PatientConflict(study_key="1.2.9", known_as="SOP Instance")
    clock.advance(100)
    assert ledger.record_patient_conflict("1.2.9") is True


def test_each_refused_instance_is_listed_newest_first_with_who_sent_it_and_which_uid(
    ledger: Ledger, clock: ManualClock
) -> None:
    start = clock.now()
    three_conflicts(ledger, clock)
    assert ledger.patient_conflicts() == [
        PatientConflictRow(
            at=start + 300,
            study_key="1.2.9",
            study_uid="1.2.9",
            known_as=None,
            reason_code="PATIENT_CONFLICT",
            calling_ae=None,
            sop_instance_uid=None,
        ),
        PatientConflictRow(
            at=start + 200,
            study_key="1.2.9",
            study_uid="1.2.9",
            known_as="SOP Instance",
            reason_code="PATIENT_CONFLICT",
            calling_ae="ER_DX",
            sop_instance_uid="1.2.9.1",
        ),
        PatientConflictRow(
            at=start + 100,
            study_key="1.2.9",
            study_uid="1.2.9",
            known_as="Study Instance",
            reason_code="PATIENT_CONFLICT",
            calling_ae="ER_DX",
            sop_instance_uid="1.2.9.2",
        ),
    ]
    # the event rows are still there, one per refusal
    details = [detail for _, _, detail in ledger.events_of("1.2.9")]
    assert details.count("PATIENT_CONFLICT: instance refused") == 3
    # nothing of the refused study, nothing more of the refused images
    assert ledger.study("1.2.7") is None
    assert [i.sop_instance_uid for i in ledger.instances_of("1.2.9")] == ["1.2.9.1"]


def test_conflicts_are_filtered_by_time_and_study_and_counted_per_study(
    ledger: Ledger, clock: ManualClock
) -> None:
    start = clock.now()
    three_conflicts(ledger, clock)
    assert record(ledger, "1.2.5", "1.2.5.1", B) is True
    clock.advance(100)
    assert isinstance(record(ledger, "1.2.5", "1.2.5.2", A), PatientConflict)
    assert [c.at for c in ledger.patient_conflicts(since=start + 200)] == [
        start + 400,
        start + 300,
        start + 200,
    ]
    assert [c.study_key for c in ledger.patient_conflicts(study_key="1.2.5")] == ["1.2.5"]
    assert [c.at for c in ledger.patient_conflicts(limit=2)] == [start + 400, start + 300]
    assert ledger.patient_conflicts(since=start + 401) == []
    assert ledger.patient_conflict_counts(["1.2.9", "1.2.5", "9.9.9"]) == {"1.2.9": 3, "1.2.5": 1}
    assert ledger.patient_conflict_counts([]) == {}


def test_no_conflict_no_row(ledger: Ledger) -> None:
    assert record(ledger, "1.2.9", "1.2.9.1", A) is True
    assert record(ledger, "1.2.9", "1.2.9.2", StudyAttributes(patient_id="PID-ALPHA")) is True
    assert ledger.patient_conflict("1.2.9", "1.2.9.3", A, calling_ae="ER_DX") is None
    assert ledger.record_patient_conflict("9.9.9", calling_ae="ER_DX") is False
    assert ledger.patient_conflicts() == []
    assert ledger.patient_conflict_counts(["1.2.9"]) == {}


def test_no_patient_value_of_the_refused_instance_is_kept(
    ledger: Ledger, ledger_url: str, clock: ManualClock
) -> None:
    three_conflicts(ledger, clock)
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as db:
            kept = db.execute(sa.text("SELECT * FROM patient_conflicts")).all()
            everywhere = [
                value
                for table in sa.inspect(engine).get_table_names()
                for row in db.execute(sa.text(f"SELECT * FROM {table}")).all()
                for value in row
            ]
    finally:
        engine.dispose()
    assert len(kept) == 3
    for value in (v for row in kept for v in row):
        assert not any(secret in str(value) for secret in PATIENT_VALUES), value
    # B's values were never stored anywhere (A's are, in study_attributes, as before)
    assert not any(secret in str(value) for value in everywhere for secret in ("BETA", "19800202"))


# --- migration 0003 ---------------------------------------------------------------------------


def test_conflicts_recorded_before_0003_are_listed_after_the_upgrade(ledger_url: str) -> None:
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as db:
            command.upgrade(_config(db), "0002")
            db.commit()
            db.execute(
                sa.text(
                    "INSERT INTO studies (study_key, study_uid, state, calling_ae, destinations,"
                    " created_at, updated_at, last_received_at, attempts) VALUES ('1.2.9',"
                    " '1.2.9', 'received', 'WARD_CR', '[]', 10.0, 10.0, 10.0, 0)"
                )
            )
            db.execute(
                sa.text(
                    "INSERT INTO events (study_key, at, state, detail) VALUES"
                    " ('1.2.9', 10.0, 'received', 'instance ok'),"
                    " ('1.2.9', 20.0, 'received', 'PATIENT_CONFLICT: instance refused'),"
                    " ('1.2.9', 30.0, 'received', 'PATIENT_CONFLICT: instance refused')"
                )
            )
            db.commit()
    finally:
        engine.dispose()
    ledger = Ledger(ledger_url)
    try:
        assert [(c.at, c.known_as, c.calling_ae) for c in ledger.patient_conflicts()] == [
            (30.0, None, None),
            (20.0, None, None),
        ]
        assert ledger.patient_conflict_counts(["1.2.9"]) == {"1.2.9": 2}
    finally:
        ledger.close()


def test_0003_downgrades_and_upgrades_again(ledger_url: str) -> None:
    Ledger(ledger_url).close()
    engine = sa.create_engine(ledger_url)
    try:
        with engine.connect() as db:
            command.downgrade(_config(db), "0002")
            db.commit()
            assert "patient_conflicts" not in sa.inspect(db).get_table_names()
            command.upgrade(_config(db), "head")
            db.commit()
            assert "patient_conflicts" in sa.inspect(db).get_table_names()
    finally:
        engine.dispose()


# --- --since ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 1_000_000.0 - 90),
        ("30m", 1_000_000.0 - 1800),
        ("24h", 1_000_000.0 - 86400),
        ("1.5d", 1_000_000.0 - 129600),
        ("2W", 1_000_000.0 - 1_209_600),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC).timestamp()),
        ("2026-12-01T08:30", datetime(2026, 12, 1, 8, 30, tzinfo=UTC).timestamp()),
        ("2026-12-01T09:30:00+01:00", datetime(2026, 12, 1, 8, 30, tzinfo=UTC).timestamp()),
    ],
)
def test_since_is_a_duration_back_or_a_date_in_utc(text: str, expected: float) -> None:
    assert parse_since(text, 1_000_000.0) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "-3h", "12x", "2026-13-01"])
def test_since_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_since(text, 1_000_000.0)


# --- the commands (SQLite in the data folder) ------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder whose ledger holds study 1.2.9 with three conflicts, one of them an hour
    old, and study 1.2.5 with none."""
    now = time.time()
    clock = ManualClock(now - 3600 - 200)
    ledger = Ledger(f"sqlite:///{(tmp_path / 'ledger.sqlite').resolve()}", clock=clock)
    try:
        assert record(ledger, "1.2.5", "1.2.5.1", B) is True
        three_conflicts(ledger, clock)  # at now - 3500, now - 3400, now - 3300
        clock.advance(now - 60 - clock.now())
        assert isinstance(record(ledger, "1.2.9", "1.2.9.3", B, "ER_DX"), PatientConflict)
    finally:
        ledger.close()
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str]:
    code = main([*args, "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    for secret in PATIENT_VALUES:
        assert secret not in out
    return code, out


def test_conflicts_command_prints_a_table_and_json(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(capsys, data_dir, "conflicts")
    assert code == 0
    lines = [" ".join(line.split()) for line in text.splitlines()]  # one space apart
    assert lines[0] == "TIME CALLING AE COLLIDING UID KNOWN STUDY REFUSED SOP INSTANCE REASON"
    assert len(lines) == 5
    assert lines[1].endswith(" ER_DX Study Instance 1.2.9 1.2.9.3 PATIENT_CONFLICT")
    assert lines[2].endswith(" - unknown 1.2.9 - PATIENT_CONFLICT")
    assert lines[3].endswith(" ER_DX SOP Instance 1.2.9 1.2.9.1 PATIENT_CONFLICT")
    assert lines[4].endswith(" ER_DX Study Instance 1.2.9 1.2.9.2 PATIENT_CONFLICT")

    code, out = cli(capsys, data_dir, "conflicts", "--json")
    assert code == 0
    listed = json.loads(out)
    assert [(c["calling_ae"], c["colliding_uid"], c["sop_instance_uid"]) for c in listed] == [
        ("ER_DX", "Study Instance", "1.2.9.3"),
        (None, None, None),
        ("ER_DX", "SOP Instance", "1.2.9.1"),
        ("ER_DX", "Study Instance", "1.2.9.2"),
    ]
    assert {c["study_uid"] for c in listed} == {"1.2.9"}
    assert {c["reason_code"] for c in listed} == {"PATIENT_CONFLICT"}
    assert datetime.fromisoformat(listed[0]["at"]).timestamp() == pytest.approx(
        time.time() - 60, abs=30
    )


def test_conflicts_since_and_last(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = cli(capsys, data_dir, "conflicts", "--json", "--since", "30m")
    assert code == 0
    assert [c["sop_instance_uid"] for c in json.loads(out)] == ["1.2.9.3"]
    code, out = cli(capsys, data_dir, "conflicts", "--since", "2h", "--last", "2")
    assert code == 0
    assert len(out.splitlines()) == 4  # header, two rows, and a note that there are more
    assert "--last N shows more" in out
    later = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat(timespec="seconds")
    code, out = cli(capsys, data_dir, "conflicts", "--since", later)
    assert (code, out.startswith("no patient conflicts since")) == (0, True)


def test_conflicts_since_must_be_a_time(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["conflicts", "--since", "yesterday", "--data-dir", str(data_dir)])
    assert refused.value.code == 2
    assert "--since" in capsys.readouterr().err


def test_studies_and_status_make_a_study_with_conflicts_noticeable(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli(capsys, data_dir, "studies")
    assert code == 0
    by_study = {line.split()[1]: line for line in text.splitlines()}
    assert by_study["1.2.9"].endswith("patient conflicts: 4")
    assert "conflict" not in by_study["1.2.5"]
    code, out = cli(capsys, data_dir, "studies", "--json")
    counts = {s["study_uid"]: s["patient_conflicts"] for s in json.loads(out)}
    assert counts == {"1.2.9": 4, "1.2.5": 0}

    code, text = cli(capsys, data_dir, "status", "1.2.9")
    assert code == 0
    assert "PATIENT_CONFLICT: 4 instance(s) of another patient refused" in text
    assert "from ER_DX: SOP Instance 1.2.9.1 refused, its SOP Instance UID known" in text
    assert "from ER_DX: SOP Instance 1.2.9.2 refused, its Study Instance UID known" in text
    assert "an instance refused (sender and UIDs not kept)" in text
    code, out = cli(capsys, data_dir, "status", "1.2.9", "--json")
    status = json.loads(out)
    assert status["patient_conflicts"] == 4
    assert [c["colliding_uid"] for c in status["conflicts"]] == [
        "Study Instance",
        None,
        "SOP Instance",
        "Study Instance",
    ]
    code, text = cli(capsys, data_dir, "status", "1.2.5")
    assert "PATIENT_CONFLICT" not in text and "conflict " not in text
