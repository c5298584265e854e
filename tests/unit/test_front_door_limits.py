"""Limits at the front door, each with a minimal reproducer from the issue-12 campaign, over
real loopback connections: bare TCP connections and slow senders do not hold association
slots, oversized PDUs are not read, data sets are bounded while they arrive (and when they
inflate), and partial files go when their association ends."""

from __future__ import annotations

import copy
import io
import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_node.dicom import header, status
from cxr_node.dicom.handlers import data_set_digest
from cxr_node.dicom.header import HeaderRefused, data_set_offset, open_header
from cxr_node.settings import load_settings
from tests import fuzzing
from tests.conftest import free_port, wait_until
from tests.unit.test_scp_handlers import (  # noqa: F401 (fixtures)
    Node,
    _process_temporary_folder_restored,
    associate,
    make_cr_chest,
)

A_ABORT = 0x07


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start_node(max_instance_bytes: int | None = None, **values: Any) -> Node:
        settings = load_settings(
            data_dir=tmp_path / f"node{len(nodes)}",
            port=free_port(),
            bind_address="127.0.0.1",
            network_timeout_seconds=10,
            **values,
        )
        node = Node(settings, 0, None, max_instance_bytes)
        nodes.append(node)
        return node

    yield start_node
    for node in nodes:
        node.stop()


def _connect(node: Node) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.settings.port), timeout=10)


def _threads(prefix: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(prefix))


def _echo(node: Node) -> int | None:
    assoc = associate(node)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def _closed_by_peer(sock: socket.socket, timeout: float) -> bytes:
    """What the node sent before it closed the connection (waits at most ``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def _tmp_files(node: Node) -> list[Path]:
    return [p for p in node.spool.receive_folder.iterdir() if p.is_file()]


# --- connections that never associate ------------------------------------------------------


def test_bare_tcp_connections_free_their_slots_at_once(start: Callable[..., Node]) -> None:
    # the ACSE timeout (30 s here) held each slot in pynetdicom 3.0: 20 connects locked out
    node = start(max_associations=2, acse_timeout_seconds=30)
    for _ in range(20):
        _connect(node).close()
    assert wait_until(lambda: _threads("AcceptorThread") == 0, timeout=5, interval=0.05)
    assert _echo(node) == status.SUCCESS


def test_slow_association_requests_do_not_hold_slots_and_are_dropped(
    start: Callable[..., Node],
) -> None:
    node = start(max_associations=2, acse_timeout_seconds=2)
    slow = [_connect(node) for _ in range(6)]
    for sock in slow:  # a PDU header claiming 1,000 bytes, then one byte
        sock.sendall(struct.pack(">BBL", 0x01, 0, 1000) + b"\x00")
    # waiting connections are not associations: a real sender still gets in
    assert _echo(node) == status.SUCCESS
    started = time.monotonic()
    for sock in slow:
        sock.sendall(b"\x00")  # a trickle does not extend the deadline
        _closed_by_peer(sock, timeout=10)
        sock.close()
    assert time.monotonic() - started < 9, "slow requests were not dropped at their deadline"
    assert wait_until(lambda: _threads("AcceptorThread") == 0, timeout=5, interval=0.05)


def test_an_oversized_association_request_is_aborted_unread(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start(max_association_request_bytes=65536)
    sock = _connect(node)
    with caplog.at_level(logging.WARNING, logger="cxr_node.compat"):
        sock.sendall(struct.pack(">BBL", 0x01, 0, 64 * 1024 * 1024) + b"\x00" * 4096)
        answer = _closed_by_peer(sock, timeout=10)
    sock.close()
    assert answer[:1] == bytes([A_ABORT])
    assert "declaring 67108864 bytes (limit 65536)" in caplog.text
    assert _echo(node) == status.SUCCESS


def test_an_unknown_pdu_type_is_aborted(start: Callable[..., Node]) -> None:
    node = start()
    sock = _connect(node)
    sock.sendall(struct.pack(">BBL", 0x2A, 0, 4) + b"junk")
    assert _closed_by_peer(sock, timeout=10)[:1] == bytes([A_ABORT])
    sock.close()


def test_a_data_pdu_longer_than_max_pdu_aborts_the_association(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start(max_pdu=16384)
    assoc = associate(node)
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    with caplog.at_level(logging.WARNING, logger="cxr_node.compat"):
        raw.sendall(struct.pack(">BBL", 0x04, 0, 256 * 1024 * 1024) + b"\x00" * 1024)
        assert wait_until(lambda: assoc.is_aborted, timeout=10, interval=0.05)
    assert "declaring 268435456 bytes (limit 16384)" in caplog.text
    assert _echo(node) == status.SUCCESS


# --- data sets while they arrive -----------------------------------------------------------


def _store_in(assoc: Any, dataset: Dataset) -> int:
    response = assoc.send_c_store(dataset)
    assert "Status" in response
    return int(response.Status)


def test_max_instance_bytes_applies_while_the_data_arrive(
    start: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start(max_instance_bytes=32 * 1024, max_pdu=16384)
    big, small = make_cr_chest(256, 256), make_cr_chest()  # 128 KiB of pixels; 10 KiB
    assoc = associate(node)
    try:
        with caplog.at_level(logging.WARNING):
            assert _store_in(assoc, big) == status.OUT_OF_RESOURCES
            assert _store_in(assoc, small) == status.SUCCESS  # the association goes on
    finally:
        assoc.release()
    assert "over max_instance_bytes (32768 bytes): Out of Resources" in caplog.text
    assert not node.files_of(big.StudyInstanceUID)
    assert node.files_of(small.StudyInstanceUID)
    assert wait_until(lambda: not _tmp_files(node), timeout=5, interval=0.05)


def test_the_free_space_floor_applies_while_the_data_arrive(start: Callable[..., Node]) -> None:
    node = start(max_pdu=16384)
    free = iter([10**12] * 2 + [0] * 1000)  # the disk fills up during the transfer
    limits = node.handler.receive_limits
    limits._free_bytes = lambda: next(free)
    limits._min_free_bytes = 1
    dataset = make_cr_chest(256, 256)
    assoc = associate(node)
    try:
        assert _store_in(assoc, dataset) == status.OUT_OF_RESOURCES
    finally:
        assoc.release()
    assert not node.files_of(dataset.StudyInstanceUID)


def _pdata_pdus(dataset: Dataset, context_id: int, max_pdu: int) -> list[bytes]:
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = dataset.SOPClassUID
    primitive.AffectedSOPInstanceUID = dataset.SOPInstanceUID
    primitive.Priority = 2
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, little_endian=True, implicit_vr=False)
    primitive.DataSet = io.BytesIO(buffer.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return [_encoded(p) for p in message.encode_msg(context_id, max_pdu)]


def _encoded(primitive: Any) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_a_partial_data_set_is_removed_when_its_association_aborts(
    start: Callable[..., Node],
) -> None:
    node = start(max_pdu=16384)
    dataset = make_cr_chest(256, 256)
    assoc = associate(node)
    context_id = next(
        int(cx.context_id)  # type: ignore[arg-type]
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == dataset.SOPClassUID
    )
    pdus = _pdata_pdus(dataset.copy(), context_id, 16384)
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    for pdu in pdus[: len(pdus) // 2]:
        raw.sendall(pdu)
    assert wait_until(lambda: bool(_tmp_files(node)), timeout=5, interval=0.02)
    assoc.abort()
    assert wait_until(lambda: not _tmp_files(node), timeout=5, interval=0.05)
    assert not node.files_of(dataset.StudyInstanceUID)


# --- deflated data sets --------------------------------------------------------------------


def _deflated(dataset: Dataset, body: bytes | None = None) -> bytes:
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if body is None else data[: _offset(data)] + body


def _offset(data: bytes) -> int:
    return 128 + 4 + 12 + int.from_bytes(data[140:144], "little")


def _send_file(node: Node, data: bytes, tmp_path: Path, sop_class: str) -> int:
    path = tmp_path / f"{generate_uid()}.dcm"
    path.write_bytes(data)
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [DeflatedExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes as they are
    try:
        response = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
        assoc.release()
    return int(response.Status)


def _bomb(megabytes: int) -> bytes:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(b"\x00" * (megabytes << 20)) + deflater.flush()


def test_a_deflated_radiograph_is_stored(start: Callable[..., Node], tmp_path: Path) -> None:
    node = start(max_instance_bytes=1 << 20)
    dataset = make_cr_chest()
    data = _deflated(dataset)
    assert _send_file(node, data, tmp_path, dataset.SOPClassUID) == status.SUCCESS
    assert node.files_of(dataset.StudyInstanceUID)


def test_a_deflate_bomb_is_refused_while_it_inflates(
    start: Callable[..., Node], tmp_path: Path
) -> None:
    node = start(max_instance_bytes=8 << 20)
    dataset = make_cr_chest()
    data = _deflated(dataset, _bomb(64))  # ~64 KB sent, 64 MB inflated
    assert len(data) < 200_000
    assert _send_file(node, data, tmp_path, dataset.SOPClassUID) == status.OUT_OF_RESOURCES
    assert not node.files_of(dataset.StudyInstanceUID)
    assert wait_until(lambda: not _tmp_files(node), timeout=5, interval=0.05)


def test_a_garbage_deflate_stream_cannot_be_understood(
    start: Callable[..., Node], tmp_path: Path
) -> None:
    node = start()
    dataset = make_cr_chest()
    garbage = np.random.default_rng(12).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes()
    data = _deflated(dataset, garbage)
    assert _send_file(node, data, tmp_path, dataset.SOPClassUID) == status.CANNOT_UNDERSTAND
    assert not node.files_of(dataset.StudyInstanceUID)


# --- the header reader ---------------------------------------------------------------------


def test_a_header_of_endless_empty_elements_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(header, "MAX_HEADER_READS", 5000)
    dataset = make_cr_chest()
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    path = tmp_path / "zeros.dcm"
    path.write_bytes(buffer.getvalue() + b"\x00" * (1 << 20))  # 130,000 empty elements
    with pytest.raises(HeaderRefused) as refused, open_header(path, None):
        pass
    assert refused.value.status == status.CANNOT_UNDERSTAND


def test_the_header_reader_stops_before_the_pixels(tmp_path: Path) -> None:
    dataset = make_cr_chest()
    path = tmp_path / "chest.dcm"
    dataset.save_as(path, enforce_file_format=True)
    with open_header(path, None) as read:
        assert read.has_pixel_data
        assert "PixelData" not in read.dataset
        assert read.dataset.SOPInstanceUID == dataset.SOPInstanceUID
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)
    with open_header(path, None) as read:
        assert not read.has_pixel_data
    assert data_set_offset(path) == _offset(path.read_bytes())


# --- racing senders ------------------------------------------------------------------------


def test_two_patients_racing_with_the_same_uids_keep_the_first_file(
    start: Callable[..., Node],
) -> None:
    """Two associations send patient A's and patient B's image under the same UIDs at once:
    one is stored, the other refused, and the spool file is the one the ledger recorded."""
    node = start()
    for round_number in range(8):
        first = make_cr_chest()
        second = copy.deepcopy(first)
        second.PatientID, second.PatientName = f"OTHER-{round_number}", "OTHER^PATIENT"
        associations = [associate(node), associate(node)]
        barrier = threading.Barrier(2)
        answers: dict[str, int] = {}

        def send(
            name: str,
            dataset: Dataset,
            assoc: Any,
            barrier: threading.Barrier = barrier,
            answers: dict[str, int] = answers,
        ) -> None:
            barrier.wait()
            answers[name] = _store_in(assoc, dataset)

        threads = [
            threading.Thread(target=send, args=(name, dataset, assoc))
            for name, dataset, assoc in zip(("A", "B"), (first, second), associations, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for assoc in associations:
            assoc.release()
        assert sorted(answers.values()) == [status.SUCCESS, status.PATIENT_CONFLICT]
        path = node.spool.instance_path(first.StudyInstanceUID, first.SOPInstanceUID)
        kept = pydicom.dcmread(path)
        winner = first if answers["A"] == status.SUCCESS else second
        assert kept.PatientID == winner.PatientID
        recorded = node.ledger.instance_digest(path.parent.name, str(first.SOPInstanceUID))
        assert recorded == data_set_digest(path)


def test_a_header_of_many_small_values_is_refused_past_its_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(header, "MAX_HEADER_BYTES", 256 * 1024)
    dataset = make_cr_chest()
    for index in range(100):  # 100 private values of 4,000 bytes: each under the deferral size
        dataset.add_new((0x0011, 0x1000 + index), "OB", b"\x01" * 4000)
    path = tmp_path / "wide.dcm"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(HeaderRefused) as refused, open_header(path, None):
        pass
    assert "bytes before its pixels" in refused.value.reason
    monkeypatch.setattr(header, "MAX_HEADER_BYTES", 1024 * 1024)
    with open_header(path, None) as read:
        assert read.has_pixel_data


# --- protocol errors that killed pynetdicom's threads ------------------------------------


def test_a_command_set_without_a_command_field_gets_an_abort(start: Callable[..., Node]) -> None:
    node = start()
    peer = fuzzing.RawPeer(node.settings.port)
    try:
        answer, accepted = peer.associate()
        assert answer.kind == 0x02 and accepted
        context_id = next(iter(accepted))
        peer.send(fuzzing.p_data(context_id, fuzzing.command_set(None), command=True, last=True))
        assert peer.receive(10).kind == A_ABORT
    finally:
        peer.close()
    assert _echo(node) == status.SUCCESS


def test_an_even_presentation_context_id_gets_an_abort(start: Callable[..., Node]) -> None:
    node = start()
    peer = fuzzing.RawPeer(node.settings.port)
    try:
        contexts = [(2, ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])]
        answer, _ = peer.associate(contexts=contexts)
        assert answer.kind == A_ABORT
    finally:
        peer.close()
    assert _echo(node) == status.SUCCESS
