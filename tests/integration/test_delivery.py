"""Delivery to real destinations through a running node: a destination down for 30 s (across a
crash of the node) still gets its results; one that rejects us permanently is given up on with
the reason; a dead one never delays a healthy one; results follow per-source routes; a study
that is not analysed gets a "not analysed" SR."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from pynetdicom import AE

from tests.conftest import StoreSCP, free_port, require_tool, wait_until
from tests.dicom_checks import dciodvfy_errors, dsrdump
from tests.integration.node import NodeProcess, storescu

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"
HAND = "pylibjpeg-data/NM_Kakadu44_SOTmarkerincons.dcm"


@pytest.fixture
def chest(corpus: Path) -> Path:
    require_tool("/usr/bin/storescu")
    return corpus / CHEST


def _node(tmp_path: Path, models: Path, config: dict[str, Any], data: str = "node") -> NodeProcess:
    path = tmp_path / f"{data}.yaml"
    path.write_text(yaml.safe_dump({"study_quiet_seconds": 0.3, **config}))
    return NodeProcess(tmp_path / data, models, "--config", str(path))


def _copies(source: Path, folder: Path, count: int) -> list[Path]:
    """``count`` copies of an image, each in a study of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        dataset = pydicom.dcmread(source)
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{index}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def _delivery(node: NodeProcess, name: str) -> dict[str, Any]:
    studies = node.studies()
    assert studies, node.log()
    deliveries = studies[0]["deliveries"]
    assert isinstance(deliveries, dict)
    return dict(deliveries.get(name) or {})


def test_a_destination_down_30_s_across_a_node_crash_gets_its_results(
    tmp_path: Path, models_dir: Path, chest: Path, nodes: list[NodeProcess]
) -> None:
    port = free_port()  # the destination is down: nothing listens here yet
    config = {
        "destinations": [f"LATE@127.0.0.1:{port}"],
        "delivery_retry_initial_seconds": 1,
        "delivery_retry_max_seconds": 5,
    }
    node = _node(tmp_path, models_dir, config).start()
    nodes.append(node)
    down_since = time.monotonic()
    assert storescu(node.port, chest).returncode == 0
    assert wait_until(lambda: _delivery(node, "LATE").get("attempts", 0) >= 1, 60), node.log()
    assert _delivery(node, "LATE")["state"] == "pending"
    assert "no association" in str(_delivery(node, "LATE")["last_error"])

    node.kill()  # a crash while the retry is scheduled; the workers die with serve
    restarted = _node(tmp_path, models_dir, config).start()
    nodes.append(restarted)
    time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
    late = StoreSCP(tmp_path / "late", ae_title="LATE", port=port)
    try:
        assert wait_until(lambda: len(late.files()) >= 2, timeout=60), restarted.log()
        assert wait_until(lambda: restarted.studies()[0]["state"] == "delivered", 10)
        assert _delivery(restarted, "LATE")["attempts"] >= 2
    finally:
        late.stop()


def test_a_permanent_association_rejection_is_given_up_with_its_reason(
    tmp_path: Path, models_dir: Path, chest: Path, nodes: list[NodeProcess]
) -> None:
    ae = AE(ae_title="STRICT")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.require_calling_aet = ["SOMEBODY_ELSE"]  # we are not allowed: rejected-permanent
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        node = _node(tmp_path, models_dir, {"destinations": [f"STRICT@127.0.0.1:{port}"]}).start()
        nodes.append(node)
        assert storescu(node.port, chest).returncode == 0
        assert wait_until(lambda: node.studies()[0]["state"] == "failed", 60), node.log()
        study = node.studies()[0]
        assert study["reason_code"] == "DELIVERY_FAILED"
        assert "rejected permanently" in str(study["reason"])
        time.sleep(5)  # no retry storm: still one attempt
        assert _delivery(node, "STRICT")["attempts"] == 1
        assert _delivery(node, "STRICT")["state"] == "failed"
    finally:
        server.shutdown()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung destination)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield int(listener.getsockname()[1])
    listener.close()


def test_a_dead_destination_never_delays_a_healthy_one(
    tmp_path: Path,
    models_dir: Path,
    chest: Path,
    storescp: StoreSCP,
    black_hole: int,
    nodes: list[NodeProcess],
) -> None:
    hang = 60.0  # each attempt on the dead destination hangs this long before timing out
    config = {
        "destinations": [f"DEAD@127.0.0.1:{black_hole}", storescp.address],
        "delivery_timeout_seconds": hang,
    }
    node = _node(tmp_path, models_dir, config).start()
    nodes.append(node)
    studies = _copies(chest, tmp_path / "studies", 3)
    started = time.monotonic()
    for study in studies:
        assert storescu(node.port, study).returncode == 0
    # Had the dead destination held up analysis or the healthy destination, nothing more
    # could arrive before its first attempt times out.
    assert wait_until(lambda: len(storescp.files()) >= 6, timeout=hang - 15), node.log()
    assert time.monotonic() - started < hang
    states = {s["study_key"]: s["deliveries"] for s in node.studies()}
    assert len(states) == 3
    for deliveries in states.values():
        assert isinstance(deliveries, dict)
        assert deliveries["DEST"]["state"] == "delivered"
        assert deliveries["DEAD"]["state"] == "pending"
    # the delivery worker is a process of its own, without torch
    found = re.search(r"delivery worker started \(pid (\d+)\)", node.log())
    assert found, node.log()
    assert "libtorch" not in Path(f"/proc/{found[1]}/maps").read_text()


def test_results_follow_the_route_of_their_source(
    tmp_path: Path, models_dir: Path, chest: Path, nodes: list[NodeProcess]
) -> None:
    ward = StoreSCP(tmp_path / "ward", ae_title="WARD_VIEW")
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS")
    try:
        config = {
            "destinations": [ward.address, pacs.address],
            "sources": [
                {"ae_title": "WARD_DX", "host": "127.0.0.0/8", "destinations": ["WARD_VIEW"]},
                {"ae_title": "ER_CR", "destinations": ["PACS", "WARD_VIEW"]},
            ],
            "default_destinations": ["PACS"],
        }
        node = _node(tmp_path, models_dir, config).start()
        nodes.append(node)
        ward_study, er_study, other_study = _copies(chest, tmp_path / "studies", 3)
        assert storescu(node.port, ward_study, calling="WARD_DX").returncode == 0
        assert storescu(node.port, er_study, calling="ER_CR").returncode == 0
        assert storescu(node.port, other_study, calling="ELSEWHERE").returncode == 0
        assert wait_until(lambda: len(ward.files()) >= 4 and len(pacs.files()) >= 4, timeout=90), (
            node.log()
        )
        time.sleep(2)

        def studies_at(scp: StoreSCP) -> set[str]:
            return {str(pydicom.dcmread(p).StudyInstanceUID) for p in scp.files()}

        uid = {p: str(pydicom.dcmread(p).StudyInstanceUID) for p in (ward_study, er_study)}
        other_uid = str(pydicom.dcmread(other_study).StudyInstanceUID)
        assert studies_at(ward) == {uid[ward_study], uid[er_study]}
        assert studies_at(pacs) == {uid[er_study], other_uid}
    finally:
        ward.stop()
        pacs.stop()


@pytest.mark.parametrize(
    ("image", "reason_code"),
    [(HAND, "BODY_PART"), ("pylibjpeg-data/966.dcm", "UNDECODABLE")],
    ids=["not eligible", "undecodable"],
)
def test_a_study_not_analysed_gets_a_notice_saying_why(
    tmp_path: Path,
    models_dir: Path,
    corpus: Path,
    storescp: StoreSCP,
    nodes: list[NodeProcess],
    image: str,
    reason_code: str,
) -> None:
    require_tool("/usr/bin/storescu")
    source = corpus / image
    node = _node(tmp_path, models_dir, {"destinations": [storescp.address]}).start()
    nodes.append(node)
    assert storescu(node.port, source, extra=("-R", "-xv")).returncode == 0
    assert wait_until(lambda: len(storescp.files()) >= 1, timeout=90), node.log()
    time.sleep(3)  # a second notice, or results, would have arrived by now
    files = storescp.files()
    assert len(files) == 1
    notice = pydicom.dcmread(files[0])
    header = pydicom.dcmread(source, stop_before_pixels=True)
    assert notice.SOPClassUID == Comprehensive3DSRStorage
    assert notice.StudyInstanceUID == header.StudyInstanceUID
    assert "not for diagnostic use" in notice.SeriesDescription
    assert dciodvfy_errors(files[0]) == []
    dump = dsrdump(files[0]).stdout
    assert "Not done" in dump and reason_code in dump
    study = node.studies()[0]
    assert study["reason_code"] == reason_code
    assert study["state"] in {"not_eligible", "failed"}


def test_each_frontal_image_of_a_study_gets_its_own_results(
    tmp_path: Path, models_dir: Path, chest: Path, storescp: StoreSCP, nodes: list[NodeProcess]
) -> None:
    study_uid = str(generate_uid())
    images = []
    for index, view in enumerate(("PA", "AP", "LL")):
        dataset = pydicom.dcmread(chest)
        dataset.StudyInstanceUID = study_uid
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dataset.ViewPosition = view
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path)
        images.append(path)
    node = _node(tmp_path, models_dir, {"destinations": [storescp.address]}).start()
    nodes.append(node)
    assert storescu(node.port, *images).returncode == 0  # one association, one study
    assert wait_until(lambda: len(storescp.files()) >= 4, timeout=90), node.log()
    time.sleep(3)
    received = [pydicom.dcmread(p) for p in storescp.files()]
    assert len(received) == 4  # SR + SC for PA and for AP; nothing for the lateral
    frontal = {str(pydicom.dcmread(p).SOPInstanceUID) for p in images[:2]}
    referenced = {
        str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        for ds in received
        if ds.Modality != "SR"
    }
    assert referenced == frontal
    study = node.studies()[0]
    assert study["state"] == "delivered"
