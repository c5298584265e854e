"""C-STORE SCU delivery (workers.deliver.dicom) against real pynetdicom SCPs on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt

from cxr_node.destinations import Destination
from cxr_node.dicom import status
from cxr_node.errors import TransientError
from tests.conftest import free_port
from tests.unit._synthetic import make_dx_chest
from workers.deliver import dicom as scu
from workers.deliver.dicom import (
    AssociationPool,
    AssociationRefused,
    DeliveryRejected,
    DestinationUnreachable,
    send_files,
    send_study,
)


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


def test_files_go_out_as_they_are_on_disk_when_their_syntax_is_accepted(
    result_files: list[Path], servers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decoding and re-encoding on the way out: the peer gets the file's own bytes."""

    def no_decoding(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the file was decoded")

    monkeypatch.setattr(scu, "dcmread", no_decoding)
    server, port, received = _scp(
        [Comprehensive3DSRStorage, SecondaryCaptureImageStorage], status.SUCCESS
    )
    servers.append(server)
    send_files(_destination(port), result_files, "CXR")
    assert len(received) == 2


def test_destination_without_sr_support_is_a_permanent_rejection(
    result_files: list[Path], servers: list[Any]
) -> None:
    server, port, received = _scp([SecondaryCaptureImageStorage], status.SUCCESS)
    servers.append(server)
    with pytest.raises(DeliveryRejected, match="Comprehensive 3D SR Storage; 1 other"):
        send_files(Destination(ae_title="DEST", host="127.0.0.1", port=port), result_files, "CXR")
    assert len(received) == 1  # the heatmap still arrives


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


def _results_scp(servers: list[Any]) -> tuple[Any, int, list[str]]:
    """A destination that accepts both result classes and answers Success."""
    server, port, received = _scp(
        [Comprehensive3DSRStorage, SecondaryCaptureImageStorage], status.SUCCESS
    )
    servers.append(server)
    return server, port, received


def _destination(port: int) -> Destination:
    return Destination(ae_title="DEST", host="127.0.0.1", port=port)


def test_pool_reuses_one_association_for_several_studies(
    result_files: list[Path], servers: list[Any]
) -> None:
    _server, port, received = _results_scp(servers)
    pool = AssociationPool("CXR", timeout=10, idle_seconds=30)
    try:
        for _ in range(3):
            assert send_study(pool, _destination(port), result_files) == 2
        assert pool.opened == 1
        assert len(received) == 6
    finally:
        pool.close_all()


def test_pool_closes_idle_associations(result_files: list[Path], servers: list[Any]) -> None:
    server, port, _ = _scp([Comprehensive3DSRStorage, SecondaryCaptureImageStorage], 0)
    servers.append(server)
    pool = AssociationPool("CXR", timeout=10, idle_seconds=0.01)
    send_study(pool, _destination(port), result_files)
    time.sleep(0.05)
    assert pool.close_idle() == 1
    send_study(pool, _destination(port), result_files)
    assert pool.opened == 2
    pool.close_all()


def test_a_stale_pooled_association_is_replaced_once(
    result_files: list[Path], servers: list[Any]
) -> None:
    server, port, received = _results_scp(servers)
    pool = AssociationPool("CXR", timeout=10, idle_seconds=30)
    try:
        send_study(pool, _destination(port), result_files)
        for association in server.active_associations:
            association.abort()  # the peer drops the idle association
        time.sleep(0.2)
        assert send_study(pool, _destination(port), result_files) == 2
        assert pool.opened == 2
        assert len(received) == 4
    finally:
        pool.close_all()


def test_permanent_association_rejection(result_files: list[Path], servers: list[Any]) -> None:
    ae = AE(ae_title="DEST")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.require_calling_aet = ["ONLY_THIS_ONE"]
    port = free_port()
    servers.append(ae.start_server(("127.0.0.1", port), block=False))
    with pytest.raises(AssociationRefused, match="rejected permanently"):
        send_files(_destination(port), result_files, "CXR")


def test_nothing_listening_is_unreachable(result_files: list[Path]) -> None:
    with pytest.raises(DestinationUnreachable, match="no association"):
        send_files(_destination(free_port()), result_files, "CXR", timeout=5)


def test_an_implicit_only_destination_gets_re_encoded_objects(
    result_files: list[Path], servers: list[Any]
) -> None:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.context.transfer_syntax))
        return status.SUCCESS

    ae = AE(ae_title="DEST")
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class, [ImplicitVRLittleEndian])
    port = free_port()
    servers.append(
        ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
    )
    send_files(_destination(port), result_files, "CXR")
    assert received == [ImplicitVRLittleEndian, ImplicitVRLittleEndian]


def test_after_a_failure_part_way_only_the_unacknowledged_files_are_sent_again(
    result_files: list[Path], servers: list[Any]
) -> None:
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return status.OUT_OF_RESOURCES if len(received) == 2 else status.SUCCESS

    ae = AE(ae_title="DEST")
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class)
    port = free_port()
    servers.append(
        ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
    )
    pool = AssociationPool("CXR", timeout=10, idle_seconds=30)
    acknowledged: list[Path] = []
    try:
        with pytest.raises(DestinationUnreachable, match="0xA700"):
            send_study(pool, _destination(port), result_files, acknowledged.append)
        assert acknowledged == result_files[:1]  # the first, as soon as it was stored
        remaining = [f for f in result_files if f not in acknowledged]
        assert send_study(pool, _destination(port), remaining, acknowledged.append) == 1
    finally:
        pool.close_all()
    assert acknowledged == result_files
    first, second = (dcmread(f).SOPInstanceUID for f in result_files)
    assert received == [first, second, second]  # the first was never sent twice
