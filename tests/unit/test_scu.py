"""C-STORE SCU delivery (cxr_node.dicom.scu) against real pynetdicom SCPs on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt

from cxr_node.dicom import status
from cxr_node.dicom.scu import DeliveryRejected, send_files
from cxr_node.errors import TransientError
from cxr_node.jobs import Destination
from tests.conftest import free_port
from tests.unit._synthetic import make_dx_chest


def _scp(sop_classes: list[str], answer: int) -> tuple[Any, int, list[str]]:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return answer

    ae = AE(ae_title="DEST")
    for sop_class in sop_classes:
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, port, received


@pytest.fixture
def result_files(tmp_path: Path) -> list[Path]:
    """Two files standing in for our results: one SR-class, one SC-class (synthetic)."""
    paths = []
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        dataset = make_dx_chest(64, 64)
        dataset.SOPClassUID = sop_class
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = tmp_path / f"{sop_class}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for server in started:
        server.shutdown()


def test_delivers_every_file(result_files: list[Path], servers: list[Any]) -> None:
    server, port, received = _scp(
        [Comprehensive3DSRStorage, SecondaryCaptureImageStorage], status.SUCCESS
    )
    servers.append(server)
    send_files(Destination(ae_title="DEST", host="127.0.0.1", port=port), result_files, "CXR")
    assert len(received) == 2


def test_destination_without_sr_support_is_a_permanent_rejection(
    result_files: list[Path], servers: list[Any]
) -> None:
    server, port, received = _scp([SecondaryCaptureImageStorage], status.SUCCESS)
    servers.append(server)
    with pytest.raises(DeliveryRejected, match="Comprehensive 3D SR"):
        send_files(Destination(ae_title="DEST", host="127.0.0.1", port=port), result_files, "CXR")
    assert received == []


def test_out_of_resources_is_transient_and_cannot_understand_is_permanent(
    result_files: list[Path], servers: list[Any]
) -> None:
    classes = [Comprehensive3DSRStorage, SecondaryCaptureImageStorage]
    busy, busy_port, _ = _scp(classes, status.OUT_OF_RESOURCES)
    broken, broken_port, _ = _scp(classes, status.CANNOT_UNDERSTAND)
    servers.extend([busy, broken])
    with pytest.raises(TransientError):
        send_files(
            Destination(ae_title="DEST", host="127.0.0.1", port=busy_port), result_files, "CXR"
        )
    with pytest.raises(DeliveryRejected, match="0xC000"):
        send_files(
            Destination(ae_title="DEST", host="127.0.0.1", port=broken_port), result_files, "CXR"
        )
