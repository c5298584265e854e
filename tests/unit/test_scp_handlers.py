"""The listening AE and its C-ECHO / C-STORE handlers over real loopback associations."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset, config
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_node.destinations import Router, SourceRule
from cxr_node.dicom import status
from cxr_node.dicom.handlers import StoreHandler, data_set_digest
from cxr_node.dicom.scp import SourceGate, start_server
from cxr_node.dicom.sessions import SenderSessions
from cxr_node.ledger import Ledger, StudyState
from cxr_node.settings import Settings, load_settings
from cxr_node.spool import Spool, safe_key
from tests.conftest import free_port

PACS = "PACS"


class Node:
    """A running SCP with its spool, ledger and the calls its router saw."""

    def __init__(
        self,
        settings: Settings,
        min_free_bytes: int,
        gate: SourceGate | None = None,
        max_instance_bytes: int | None = None,
    ) -> None:
        self.settings = settings
        self.spool = Spool(settings.spool_path)
        self.ledger = Ledger(settings.ledger)
        self.routed: list[str] = []
        self.addresses: list[str | None] = []
        self.completed: list[list[str]] = []
        self.sessions = SenderSessions(self.completed.append)
        handler = StoreHandler(
            self.spool,
            self.ledger,
            self._route,
            min_free_bytes=min_free_bytes,
            max_instance_bytes=max_instance_bytes,
            sessions=self.sessions,
        )
        self.handler = handler
        self.server = start_server(settings, handler, gate)

    def _route(self, calling_ae: str, address: str | None) -> list[str]:
        self.routed.append(calling_ae)
        self.addresses.append(address)
        return [PACS]

    def stop(self) -> None:
        self.server.shutdown()
        self.ledger.close()

    def files_of(self, study_uid: str) -> list[Path]:
        folder = self.spool.root / safe_key(study_uid)
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(autouse=True)
def _process_temporary_folder_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """start_server makes the spool's folder the process's temporary folder (one spool per
    serve process); the test process gets its own back afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(
        min_free_bytes: int = 0,
        gate: SourceGate | None = None,
        max_instance_bytes: int | None = None,
        additional_ae_titles: list[str] | None = None,
        max_associations: int | None = None,
    ) -> Node:
        settings = load_settings(
            data_dir=tmp_path / f"node{len(nodes)}",
            port=free_port(),
            bind_address="127.0.0.1",
            network_timeout_seconds=10,
            additional_ae_titles=additional_ae_titles,
            max_associations=max_associations,
        )
        node = Node(settings, min_free_bytes, gate, max_instance_bytes)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node()


def make_cr_chest(rows: int = 64, columns: int = 80) -> Dataset:
    """A small synthetic CR chest PA, explicit VR little endian."""
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SYNTHETIC^SCP"
    ds.PatientID = "SYN-SCP"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    pixels = (np.arange(rows * columns, dtype=np.uint32) % 4096).astype(np.uint16)
    ds.PixelData = pixels.reshape(rows, columns).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def associate(node: Node, called: str | None = None, calling: str = "MODALITY") -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", node.settings.port, ae_title=called or node.settings.ae_title)


def store(node: Node, ds: Dataset | Path) -> int:
    assoc = associate(node)
    assert assoc.is_established
    try:
        response = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert "Status" in response, "no valid C-STORE response"
    return int(response.Status)


# --- C-ECHO -----------------------------------------------------------------------------------


def test_c_echo_succeeds(node: Node) -> None:
    assoc = associate(node)
    assert assoc.is_established
    try:
        response = assoc.send_c_echo()
    finally:
        assoc.release()
    assert response.Status == status.SUCCESS


def test_wrong_called_ae_title_is_rejected(node: Node) -> None:
    assoc = associate(node, called="NOT_THE_NODE")
    assert assoc.is_rejected
    assert not assoc.is_established


# --- C-STORE ----------------------------------------------------------------------------------


def test_c_store_spools_and_records_the_instance(node: Node) -> None:
    ds = make_cr_chest()
    assert store(node, ds) == status.SUCCESS

    path = node.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert path.is_file()
    written = pydicom.dcmread(path)
    assert written.SOPInstanceUID == ds.SOPInstanceUID
    assert written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert written.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert written.PixelData == ds.PixelData

    study_key = safe_key(ds.StudyInstanceUID)
    study = node.ledger.study(study_key)
    assert study is not None
    assert study.state is StudyState.RECEIVED
    assert study.destinations == [PACS]
    instances = node.ledger.instances_of(study_key)
    assert [i.sop_instance_uid for i in instances] == [ds.SOPInstanceUID]
    assert instances[0].eligible is True
    assert instances[0].path == node.spool.relative(path)
    assert node.routed == ["MODALITY"]
    assert node.addresses == ["127.0.0.1"]
    assert list((node.spool.root / ".tmp").iterdir()) == []


def test_a_data_set_is_received_into_the_spool_folder_and_renamed_into_place(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunked receive (cxr_node.dicom.receive): the data set is written to the spool's own
    folder as it arrives, then renamed; no copy in the system temp folder, none in memory."""
    folders: list[Path] = []
    real_adopt = node.spool.adopt

    def adopt(received: Path, destination: Path) -> int:
        folders.append(received.parent)
        assert received.stat().st_dev == node.spool.root.stat().st_dev
        return real_adopt(received, destination)

    monkeypatch.setattr(node.spool, "adopt", adopt)
    ds = make_cr_chest(rows=512, columns=512)
    assert store(node, ds) == status.SUCCESS
    assert folders == [node.spool.receive_folder]
    path = node.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert pydicom.dcmread(path).PixelData == ds.PixelData
    assert list(node.spool.receive_folder.iterdir()) == []


def test_the_digest_is_of_the_data_set_as_sent(node: Node) -> None:
    """The duplicate check hashes the data set bytes, not the File Meta we add."""
    ds = make_cr_chest()
    assert store(node, ds) == status.SUCCESS
    path = node.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID)
    raw = path.read_bytes()
    meta_length = int.from_bytes(raw[140:144], "little")
    expected = hashlib.sha256(raw[144 + meta_length :]).hexdigest()
    assert data_set_digest(path) == expected
    assert node.ledger.instance_digest(safe_key(ds.StudyInstanceUID), ds.SOPInstanceUID) == (
        expected
    )
    assert len(raw) - 144 - meta_length > ds.Rows * ds.Columns * 2  # the pixels are in it


def test_ineligible_instance_is_stored_and_recorded_with_its_reason(node: Node) -> None:
    ds = make_cr_chest()
    ds.ViewPosition = "LL"
    assert store(node, ds) == status.SUCCESS
    (instance,) = node.ledger.instances_of(safe_key(ds.StudyInstanceUID))
    assert instance.eligible is False
    assert instance.reason_code == "LATERAL_VIEW"
    assert node.spool.instance_path(ds.StudyInstanceUID, ds.SOPInstanceUID).is_file()


def test_same_instance_twice_is_success_both_times_and_one_ledger_row(node: Node) -> None:
    ds = make_cr_chest()
    assert store(node, ds) == status.SUCCESS
    assert store(node, ds) == status.SUCCESS
    study_key = safe_key(ds.StudyInstanceUID)
    assert len(node.ledger.instances_of(study_key)) == 1
    assert len(node.files_of(ds.StudyInstanceUID)) == 1


# pydicom warns about the non-UID value when the handler reads it; under filterwarnings=error that
# warning would turn into an exception inside the server thread, which production never sees
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_uids_stay_inside_the_spool(node: Node) -> None:
    ds = make_cr_chest()
    with config.disable_value_validation():
        del ds.StudyInstanceUID
        ds.StudyInstanceUID = "../../../escape"
    assert store(node, ds) == status.SUCCESS
    (written,) = node.files_of(ds.StudyInstanceUID)
    assert written.resolve().is_relative_to(node.spool.root)
    assert node.ledger.study(safe_key("../../../escape")) is not None


def _write_mismatched_file(tmp_path: Path, ds: Dataset, **meta: str) -> Path:
    """A Part 10 file whose file meta (what the request announces) differs from its data set."""
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    path = tmp_path / "mismatch.dcm"
    ds.preamble = b"\x00" * 128
    ds.save_as(path, enforce_file_format=False)  # True would rewrite the meta from the data set
    return path


@pytest.fixture
def send_file_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's data set bytes as they are, announced by its file meta."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


@pytest.mark.usefixtures("send_file_as_is")
def test_sop_class_differing_from_the_request_is_0xa900(node: Node, tmp_path: Path) -> None:
    ds = make_cr_chest()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation  # the data set says DX ...
    path = _write_mismatched_file(
        tmp_path,
        ds,
        MediaStorageSOPClassUID=ComputedRadiographyImageStorage,  # ... request: CR
    )
    assert store(node, path) == status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert node.files_of(ds.StudyInstanceUID) == []
    assert node.ledger.study(safe_key(ds.StudyInstanceUID)) is None


@pytest.mark.usefixtures("send_file_as_is")
def test_sop_instance_differing_from_the_request_is_0xa900(node: Node, tmp_path: Path) -> None:
    ds = make_cr_chest()
    path = _write_mismatched_file(tmp_path, ds, MediaStorageSOPInstanceUID=generate_uid())
    assert store(node, path) == 0xA900
    assert node.files_of(ds.StudyInstanceUID) == []


def test_missing_study_uid_is_0xa900(node: Node) -> None:
    ds = make_cr_chest()
    del ds.StudyInstanceUID
    assert store(node, ds) == 0xA900
    assert node.ledger.list_studies() == []


def test_spool_under_its_free_space_floor_is_0xa700_and_writes_nothing(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(min_free_bytes=2**62)
    ds = make_cr_chest()
    assert store(node, ds) == status.OUT_OF_RESOURCES == 0xA700
    assert not (node.spool.root / safe_key(ds.StudyInstanceUID)).exists()
    assert node.files_of(ds.StudyInstanceUID) == []
    assert node.ledger.study(safe_key(ds.StudyInstanceUID)) is None
    assert list((node.spool.root / ".tmp").iterdir()) == []


def test_several_instances_of_one_study_in_one_association(node: Node) -> None:
    first = make_cr_chest()
    second = make_cr_chest()
    second.StudyInstanceUID = first.StudyInstanceUID
    assoc = associate(node)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in (first, second)]
    finally:
        assoc.release()
    assert statuses == [status.SUCCESS, status.SUCCESS]
    instances = node.ledger.instances_of(safe_key(first.StudyInstanceUID))
    assert {i.sop_instance_uid for i in instances} == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert len(node.files_of(first.StudyInstanceUID)) == 2


# --- a release ends a study -------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_release_completes_the_studies_of_its_association(node: Node) -> None:
    first, second = make_cr_chest(), make_cr_chest()
    assoc = associate(node)
    assert [int(assoc.send_c_store(ds).Status) for ds in (first, second)] == [0, 0]
    time.sleep(0.2)
    assert node.completed == []  # not while the association is open
    assoc.release()
    assert _wait_for(lambda: node.completed != [])
    expected = sorted(safe_key(ds.StudyInstanceUID) for ds in (first, second))
    assert node.completed == [expected]
    assert _wait_for(lambda: node.sessions.open_associations() == 0)


def test_a_study_still_being_sent_elsewhere_is_not_complete(node: Node) -> None:
    first, second = make_cr_chest(), make_cr_chest()
    second.StudyInstanceUID = first.StudyInstanceUID
    one, other = associate(node), associate(node)
    assert int(one.send_c_store(first).Status) == status.SUCCESS
    assert int(other.send_c_store(second).Status) == status.SUCCESS
    one.release()
    time.sleep(0.5)
    assert node.completed == []
    other.release()
    assert _wait_for(lambda: node.completed == [[safe_key(first.StudyInstanceUID)]])


def test_an_aborted_association_completes_nothing(node: Node) -> None:
    ds = make_cr_chest()
    assoc = associate(node)
    assert int(assoc.send_c_store(ds).Status) == status.SUCCESS
    assoc.abort()
    assert _wait_for(lambda: node.sessions.open_associations() == 0)
    time.sleep(0.2)
    assert node.completed == []
    assert node.ledger.is_receiving(safe_key(ds.StudyInstanceUID))  # the quiet period decides


# --- who may associate ------------------------------------------------------------------------


def _associate(port: int, calling: str, called: str = "CXR_NODE") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def test_only_known_sources_may_associate_and_changes_apply_at_once(
    start_node: Callable[..., Node],
) -> None:
    managed: list[SourceRule] = []
    router = Router([], [SourceRule(ae_title="FILE_RULE")], None, lambda: managed, 0.0)
    node = start_node(gate=lambda ae, address: router.known_source(ae, address) is not None)
    port = node.settings.port

    refused = _associate(port, "STRANGER")
    assert refused.is_rejected
    primitive = refused.acceptor.primitive
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (1, 1, 3)

    for calling in ("FILE_RULE",):
        accepted = _associate(port, calling)
        assert accepted.is_established
        accepted.release()

    managed.append(SourceRule(ae_title="STRANGER", host="127.0.0.0/8"))  # cxr-node aet add
    now_known = _associate(port, "STRANGER")
    assert now_known.is_established
    now_known.release()

    managed[0] = SourceRule(ae_title="STRANGER", host="10.0.0.0/8")  # not from loopback
    assert _associate(port, "STRANGER").is_rejected


def test_a_source_check_that_fails_rejects_transiently(start_node: Callable[..., Node]) -> None:
    """The gate raising (the ledger unreachable, say) must not let the caller in."""

    def broken_gate(ae: str, address: str | None) -> bool:
        raise RuntimeError("ledger unreachable")

    node = start_node(gate=broken_gate)
    refused = _associate(node.settings.port, "MODALITY")
    assert refused.is_rejected
    primitive = refused.acceptor.primitive
    # rejected-transient, service-user, no reason given: the sender tries again later
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 1, 1)


def test_the_spool_folder_is_the_process_temporary_folder(node: Node) -> None:
    """pynetdicom's chunked receive makes its file with NamedTemporaryFile() and no folder."""
    assert Path(tempfile.gettempdir()) == node.spool.receive_folder
    with tempfile.NamedTemporaryFile() as made_like_pynetdicom:
        assert Path(made_like_pynetdicom.name).parent == node.spool.receive_folder


def test_a_wrong_called_ae_title_is_rejected(node: Node) -> None:
    refused = _associate(node.settings.port, "MODALITY", called="SOMEONE_ELSE")
    assert refused.is_rejected
    primitive = refused.acceptor.primitive
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (1, 1, 7)


def test_an_instance_over_the_size_limit_is_out_of_resources(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(max_instance_bytes=4096)
    ds = make_cr_chest(64, 80)  # 10 kB of pixels
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="CXR_NODE")
    try:
        answer = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert answer.Status == status.OUT_OF_RESOURCES
    assert node.files_of(ds.StudyInstanceUID) == []
    assert node.ledger.study(safe_key(ds.StudyInstanceUID)) is None


def test_the_node_answers_to_its_other_ae_titles(start_node: Callable[..., Node]) -> None:
    node = start_node(additional_ae_titles=["CXR_TRIAGE"])
    for called in ("CXR_NODE", "CXR_TRIAGE"):
        association = _associate(node.settings.port, "MODALITY", called=called)
        assert association.is_established
        assert association.acceptor.ae_title == called
        association.release()
    assert _associate(node.settings.port, "MODALITY", called="SOMEONE_ELSE").is_rejected


def test_associations_beyond_the_limit_are_rejected_transiently(
    start_node: Callable[..., Node],
) -> None:
    node = start_node(max_associations=1)
    first = _associate(node.settings.port, "MODALITY")
    assert first.is_established
    try:
        second = _associate(node.settings.port, "MODALITY")
        assert second.is_rejected
        primitive = second.acceptor.primitive
        # rejected-transient, service-provider (presentation), local-limit-exceeded
        assert (primitive.result, primitive.result_source, primitive.diagnostic) == (2, 3, 2)
    finally:
        first.release()


def test_in_shadow_mode_new_studies_are_recorded_as_shadow(node: Node) -> None:
    before = make_cr_chest()
    assert store(node, before) == status.SUCCESS
    node.handler.shadow = True  # as serve makes it with shadow_mode: true
    during = make_cr_chest()
    assert store(node, during) == status.SUCCESS
    plain = node.ledger.study(safe_key(before.StudyInstanceUID))
    shadow = node.ledger.study(safe_key(during.StudyInstanceUID))
    assert plain is not None and plain.shadow is False
    assert shadow is not None and shadow.shadow is True
    assert shadow.destinations == [PACS]  # the router chose them (in serve: shadow ones only)
