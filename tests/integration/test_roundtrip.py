"""End to end: DCMTK storescu -> cxr-node -> analysis -> DCMTK storescp, with real peers."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.conftest import StoreSCP, free_port, require_tool, wait_until
from tests.dicom_checks import dciodvfy_errors
from tests.integration.node import NodeProcess, storescu

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"


@pytest.fixture
def chest(corpus: Path) -> Path:
    require_tool("/usr/bin/storescu")
    return corpus / CHEST


def _assert_results(destination: StoreSCP, source: Path) -> None:
    files = destination.files()
    assert len(files) == 2, [f.name for f in files]
    source_ds = pydicom.dcmread(source, stop_before_pixels=True)
    kinds = set()
    for path in files:
        result = pydicom.dcmread(path)
        assert result.StudyInstanceUID == source_ds.StudyInstanceUID
        assert result.SeriesInstanceUID != source_ds.SeriesInstanceUID
        assert "DEMO" in result.SeriesDescription
        kinds.add(result.SOPClassUID)
        assert dciodvfy_errors(path) == [], path.name
    assert kinds == {Comprehensive3DSRStorage, SecondaryCaptureImageStorage}


CANARIES = {
    "PatientName": "Canaryname^Patricia",
    "PatientID": "CANARY-ID-0042",
    "PatientBirthDate": "19010203",
    "AccessionNumber": "ACC-CANARY-77",
}


def _with_canaries(source: Path, folder: Path) -> Path:
    """A copy of the image with made-up, searchable patient data (synthetic values)."""
    dataset = pydicom.dcmread(source)
    for keyword, value in CANARIES.items():
        setattr(dataset, keyword, value)
    path = folder / "canary.dcm"
    dataset.save_as(path)
    return path


def test_embedded_queue_round_trip(
    tmp_path: Path, models_dir: Path, storescp: StoreSCP, chest: Path, nodes: list[NodeProcess]
) -> None:
    chest = _with_canaries(chest, tmp_path)
    node = NodeProcess(
        tmp_path / "node", models_dir, "--destination", storescp.address, "--quiet-seconds", "0.5"
    ).start()
    nodes.append(node)
    sent = storescu(node.port, chest)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), node.log()
    _assert_results(storescp, chest)
    assert wait_until(lambda: node.studies()[0]["state"] == "delivered", timeout=10)
    log = node.log()  # serve and its embedded worker write here
    assert "2 result objects delivered to" in log
    for value in CANARIES.values():
        assert value not in log and value.split("^")[0] not in log


def test_redis_broker_with_separate_worker(
    tmp_path: Path,
    models_dir: Path,
    storescp: StoreSCP,
    chest: Path,
    redis_url: str,
    nodes: list[NodeProcess],
) -> None:
    data = tmp_path / "shared"
    node = NodeProcess(
        data,
        models_dir,
        "--destination",
        storescp.address,
        "--broker",
        redis_url,
        "--quiet-seconds",
        "0.5",
    ).start()
    nodes.append(node)
    worker = NodeProcess(
        data, models_dir, "--broker", redis_url, "--destination", storescp.address, command="worker"
    ).start()
    nodes.append(worker)
    sent = storescu(node.port, chest)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), worker.log()
    _assert_results(storescp, chest)
    maps = Path(f"/proc/{node.pid}/maps").read_text()
    assert "libtorch" not in maps, "serve imported torch in Redis mode"


def test_sigkill_after_ack_before_analysis_still_delivers_once(
    tmp_path: Path, models_dir: Path, storescp: StoreSCP, chest: Path, nodes: list[NodeProcess]
) -> None:
    data = tmp_path / "node"
    only_quiet_period = {"CXR_NODE_ASSEMBLE_ON_RELEASE": "false"}
    first = NodeProcess(
        data,
        models_dir,
        "--destination",
        storescp.address,
        "--quiet-seconds",
        "4",
        env=only_quiet_period,
    ).start()
    nodes.append(first)
    sent = storescu(first.port, chest)
    assert sent.returncode == 0, sent.stderr
    first.kill()  # acknowledged, still inside the quiet period: not analysed yet
    assert storescp.files() == []
    assert first.studies()[0]["state"] == "received"

    second = NodeProcess(
        data, models_dir, "--destination", storescp.address, "--quiet-seconds", "4"
    )
    second.port = first.port
    nodes.append(second.start())
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), second.log()
    time.sleep(5)  # anything duplicated would have arrived by now
    _assert_results(storescp, chest)
    assert second.studies()[0]["state"] == "delivered"


def test_destination_down_then_up_gets_results(
    tmp_path: Path, models_dir: Path, chest: Path, nodes: list[NodeProcess]
) -> None:
    port = free_port()  # the destination's port is known now, storescp starts later
    node = NodeProcess(
        tmp_path / "node",
        models_dir,
        "--destination",
        f"LATE@127.0.0.1:{port}",
        "--quiet-seconds",
        "0.2",
    ).start()
    nodes.append(node)
    assert storescu(node.port, chest).returncode == 0
    assert wait_until(lambda: _delivery_attempts(node) >= 1, timeout=60), node.log()
    started = StoreSCP(tmp_path / "late", ae_title="LATE", port=port)
    try:
        assert wait_until(lambda: len(started.files()) >= 2, timeout=60), node.log()
        assert wait_until(lambda: node.studies()[0]["state"] == "delivered", timeout=10)
    finally:
        started.stop()


def _delivery_attempts(node: NodeProcess) -> int:
    studies = node.studies()
    if not studies:
        return 0
    deliveries = studies[0]["deliveries"]
    assert isinstance(deliveries, dict)
    return sum(int(d["attempts"]) for d in deliveries.values())
