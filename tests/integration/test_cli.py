"""The ``cxr-node`` command as users and health checks call it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_node.ledger import Ledger
from cxr_node.ledger.rows import PatientConflict, StudyAttributes
from tests.conftest import REPO, free_port, node_env
from tests.dicom_checks import dciodvfy_errors
from tests.integration.node import NodeProcess

pytestmark = pytest.mark.integration


def cxr_node(*args: str, models: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = node_env(models) if models else node_env(Path("/nonexistent"))
    return subprocess.run(
        [sys.executable, "-m", "cxr_node", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wrong_configuration_value_names_the_key(tmp_path: Path) -> None:
    result = cxr_node("serve", "--port", "70000", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "'port'" in result.stderr and "65535" in result.stderr


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("port: 11112\nae_titel: TYPO\n")
    result = cxr_node("serve", "--config", str(config))
    assert result.returncode == 2
    assert "'ae_titel'" in result.stderr and "ae_title" in result.stderr


def test_check_fails_with_one_line_when_nothing_listens(tmp_path: Path) -> None:
    result = cxr_node("check", "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert len(result.stdout.strip().splitlines()) == 1
    assert result.stdout.startswith("unhealthy: no association")


def test_check_fails_when_the_broker_is_unreachable(tmp_path: Path, models_dir: Path) -> None:
    node = NodeProcess(tmp_path / "node", models_dir).start()
    try:
        dead_broker = f"redis://127.0.0.1:{free_port()}/0"
        result = cxr_node("check", "--port", str(node.port), "--broker", dead_broker)
        assert result.returncode == 1
        assert result.stdout.startswith("unhealthy: broker unreachable")
        healthy = cxr_node("check", "--port", str(node.port), "--data-dir", str(node.data_dir))
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.strip() == "ok"
    finally:
        node.stop()


def test_analyze_json_and_outputs(tmp_path: Path, models_dir: Path, corpus: Path) -> None:
    source = corpus / "dwv/gdcm-CR-MONO1-10-chest.dcm"
    result = cxr_node(
        "analyze", "--json", "--out", str(tmp_path / "out"), str(source), models=models_dir
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["demo"] is True
    assert "DEMO" in report["model"]["name"]
    assert len(report["findings"]) == 18
    for finding in report["findings"]:
        assert set(finding) >= {"label", "probability", "positive"}
        assert 0.0 <= finding["probability"] <= 1.0
        assert finding["positive"] == (finding["probability"] >= finding["threshold"])
    assert 0.0 <= report["abnormality_score"] <= 1.0
    written = [Path(p) for p in report["written"]]
    assert len(written) == 2
    for path in written:
        assert dciodvfy_errors(path) == [], path.name


def test_analyze_png_and_undecodable_file(tmp_path: Path, models_dir: Path, corpus: Path) -> None:
    png = corpus / "chester-xray/00000002_000-No_Finding.png"
    broken = corpus / "pylibjpeg-data/966.dcm"
    result = cxr_node(
        "analyze", "--json", "--out", str(tmp_path), str(png), str(broken), models=models_dir
    )
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert reports[1]["error"] == "UNDECODABLE"
    assert len(reports[0]["written"]) == 3  # the wrapped source, the SR and the SC
    for path in reports[0]["written"]:
        assert dciodvfy_errors(Path(path)) == [], path


def _instance(ledger: Ledger, sop: str, patient: StudyAttributes, calling_ae: str) -> object:
    return ledger.record_instance(
        study_key="1.2.9",
        study_uid="1.2.9",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=f"1.2.9/{sop}.dcm",
        size=10,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae=calling_ae,
        destinations=[],
        sha256=sop,
        attributes=patient,
    )


def test_conflicts_lists_refused_instances_without_patient_data(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{(tmp_path / 'ledger.sqlite').resolve()}")
    try:
        first = StudyAttributes(patient_id="PID-ALPHA", patient_name="ALPHA^ANNA")
        other = StudyAttributes(patient_id="PID-BETA", patient_name="BETA^BERT")
        assert _instance(ledger, "1.2.9.1", first, "WARD_CR") is True
        assert isinstance(_instance(ledger, "1.2.9.2", other, "ER_DX"), PatientConflict)
    finally:
        ledger.close()

    listed = cxr_node("conflicts", "--json", "--since", "1h", "--data-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert [
        (c["calling_ae"], c["colliding_uid"], c["study_uid"]) for c in json.loads(listed.stdout)
    ] == [("ER_DX", "Study Instance", "1.2.9")]
    table = cxr_node("conflicts", "--data-dir", str(tmp_path))
    studies = cxr_node("studies", "--data-dir", str(tmp_path))
    status = cxr_node("status", "1.2.9", "--data-dir", str(tmp_path))
    assert "ER_DX" in table.stdout and "PATIENT_CONFLICT" in table.stdout
    assert "patient conflicts: 1" in studies.stdout
    assert "PATIENT_CONFLICT: 1 instance(s)" in status.stdout
    for result in (listed, table, studies, status):
        assert result.returncode == 0
        for secret in ("PID-", "ALPHA", "BETA"):
            assert secret not in result.stdout + result.stderr
    refused = cxr_node("conflicts", "--since", "last tuesday", "--data-dir", str(tmp_path))
    assert refused.returncode == 2 and "--since" in refused.stderr
