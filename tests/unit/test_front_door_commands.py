"""Hostile C-STORE commands and services the node does not provide, over real loopback
associations: each gets a DIMSE status, the association stays usable, the log stays clean; and
an image of another patient under known UIDs is refused, recorded and kept apart."""

# ruff: noqa: F811 (the fixtures of test_scp_handlers, imported)
from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import (
    C_CANCEL,
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_ACTION,
    N_CREATE,
    N_DELETE,
    N_EVENT_REPORT,
    N_GET,
    N_SET,
)
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_node.dicom import status
from cxr_node.dicom.handlers import for_log, uid_problem
from cxr_node.ledger import Ledger
from cxr_node.ledger.rows import PatientConflict, StudyAttributes
from cxr_node.spool import safe_key
from tests.unit.test_scp_handlers import (  # noqa: F401 (fixtures)
    Node,
    _process_temporary_folder_restored,
    associate,
    make_cr_chest,
    node,
    start_node,
    store,
)

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")


def _context_id(assoc: Association, abstract_syntax: str = ComputedRadiographyImageStorage) -> int:
    for context in assoc.accepted_contexts:
        if context.abstract_syntax == abstract_syntax:
            return int(context.context_id)  # type: ignore[arg-type]
    raise AssertionError("context not accepted")


def _exchange(assoc: Association, request: Any, context_id: int, answer: bool = True) -> Any:
    """Send a hand-built request primitive (pynetdicom's send_* would validate it) and return
    the response primitive, or None when none came."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context_id)
        if not answer:
            return None
        _, response = assoc.dimse.get_msg(block=True)
        return response
    finally:
        assoc._reactor_checkpoint.set()


def raw_c_store(
    assoc: Association,
    sop_instance_uid: str | None,
    sop_class_uid: str | None = ComputedRadiographyImageStorage,
    dataset: Dataset | None = None,
    with_data_set: bool = True,
) -> Any:
    request = C_STORE()
    request.MessageID = 7
    request._affected_sop_class_uid = None if sop_class_uid is None else UID(sop_class_uid)
    request._affected_sop_instance_uid = None if sop_instance_uid is None else UID(sop_instance_uid)
    if with_data_set:
        request.DataSet = io.BytesIO(encode(dataset or make_cr_chest(), False, True))
    return _exchange(assoc, request, _context_id(assoc))


def _echo_works(assoc: Association) -> bool:
    assert assoc.is_established
    answer = assoc.send_c_echo()
    return "Status" in answer and answer.Status == status.SUCCESS


HOSTILE_UIDS = {
    "empty": "",
    "missing": None,
    "nul": "1.2.3\x004.5",
    "newline": "1.2.3\nFORGED cxr_node: stored instance 1.2.3 of study 1.2.3",
    "carriage return": "1.2.3\r4",
    "tab": "1.2.3\t4",
    "too long": "1." + "2" * 500,
    "letters": "1.2.abc",
    "leading dot": ".1.2",
}


@pytest.mark.parametrize("value", list(HOSTILE_UIDS.values()), ids=list(HOSTILE_UIDS))
def test_hostile_sop_instance_uid_in_the_request_is_refused_and_the_log_stays_clean(
    node: Node, value: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assoc = associate(node)
    try:
        response = raw_c_store(assoc, value)
        assert response is not None, "no answer"
        assert response.Status == status.INVALID_REQUEST_UID == 0xC001
        assert _echo_works(assoc)
    finally:
        assoc.release()
    assert node.ledger.list_studies() == []
    text = caplog.text
    assert "\x00" not in text and "\r" not in text and "\t" not in text
    assert "FORGED" not in text.replace("\\nFORGED", "")  # only escaped, on the same line
    assert all(len(record.getMessage()) < 1000 for record in caplog.records)
    assert "Affected SOP Instance UID in the request" in text


@pytest.mark.parametrize(
    "value",
    ["", "1.2.840.10008\n5.1.4.1.1.1", "9" * 80, "1.2.840.10008.1.1"],
    ids=["empty", "newline", "too long", "verification class"],
)
def test_hostile_sop_class_uid_in_the_request_is_refused(node: Node, value: str) -> None:
    assoc = associate(node)
    try:
        response = raw_c_store(assoc, generate_uid(), sop_class_uid=value)
        assert response is not None, "no answer"
        assert response.Status == status.INVALID_REQUEST_UID
        assert _echo_works(assoc)
    finally:
        assoc.release()


def test_a_c_store_without_a_data_set_is_refused(node: Node) -> None:
    assoc = associate(node)
    try:
        response = raw_c_store(assoc, generate_uid(), with_data_set=False)
        assert response is not None
        assert response.Status == status.NO_DATA_SET == 0xC002
        assert _echo_works(assoc)
    finally:
        assoc.release()


def test_a_valid_raw_c_store_still_succeeds(node: Node) -> None:
    ds = make_cr_chest()
    assoc = associate(node)
    try:
        response = raw_c_store(assoc, ds.SOPInstanceUID, dataset=ds)
        assert response.Status == status.SUCCESS
    finally:
        assoc.release()
    assert node.ledger.study(safe_key(ds.StudyInstanceUID)) is not None


def test_for_log_escapes_and_cuts() -> None:
    assert for_log("1.2.3") == "1.2.3"
    assert for_log("1.2\nX\x00") == "1.2\\nX\\x00"
    long = for_log("1" * 1000)
    assert long.startswith("1" * 64) and "(1000 characters)" in long and len(long) < 100
    assert uid_problem("1.2.3") is None
    assert uid_problem("") == "empty"
    assert uid_problem("1." + "2" * 70) == "over 64 characters (72)"


# --- services we do not provide ---------------------------------------------------------------

QR_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def _c_request(kind: type, sop_class: str = ComputedRadiographyImageStorage) -> Any:
    request = kind()
    request.MessageID = 9
    request.AffectedSOPClassUID = sop_class
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    request.Identifier = io.BytesIO(encode(identifier, False, True))
    if kind is C_MOVE:
        request.MoveDestination = "ELSEWHERE"
    return request


def _n_request(kind: type) -> Any:
    request = kind()
    request.MessageID = 9
    uid = generate_uid()
    if kind in (N_CREATE, N_EVENT_REPORT):
        request.AffectedSOPClassUID = ComputedRadiographyImageStorage
        request.AffectedSOPInstanceUID = uid
        if kind is N_EVENT_REPORT:
            request.EventTypeID = 1
    else:
        request.RequestedSOPClassUID = ComputedRadiographyImageStorage
        request.RequestedSOPInstanceUID = uid
        if kind is N_ACTION:
            request.ActionTypeID = 1
        if kind is N_SET:
            modification = Dataset()
            modification.PatientName = "CHANGED"
            request.ModificationList = io.BytesIO(encode(modification, False, True))
    return request


REQUESTS: dict[str, Callable[[], Any]] = {
    "C-FIND": lambda: _c_request(C_FIND),
    "C-FIND Q/R class": lambda: _c_request(C_FIND, QR_FIND),
    "C-GET": lambda: _c_request(C_GET),
    "C-MOVE": lambda: _c_request(C_MOVE),
    "N-GET": lambda: _n_request(N_GET),
    "N-SET": lambda: _n_request(N_SET),
    "N-ACTION": lambda: _n_request(N_ACTION),
    "N-CREATE": lambda: _n_request(N_CREATE),
    "N-DELETE": lambda: _n_request(N_DELETE),
    "N-EVENT-REPORT": lambda: _n_request(N_EVENT_REPORT),
}


@pytest.mark.parametrize("make", list(REQUESTS.values()), ids=list(REQUESTS))
def test_other_services_get_unrecognized_operation(node: Node, make: Callable[[], Any]) -> None:
    assoc = associate(node)
    try:
        response = _exchange(assoc, make(), _context_id(assoc))
        assert response is not None, "no answer"
        assert response.Status == status.UNRECOGNIZED_OPERATION == 0x0211
        assert _echo_works(assoc)
    finally:
        assoc.release()


def test_c_cancel_is_ignored_and_the_association_stays_usable(node: Node) -> None:
    assoc = associate(node)
    try:
        cancel = C_CANCEL()
        cancel.MessageIDBeingRespondedTo = 1
        _exchange(assoc, cancel, _context_id(assoc), answer=False)
        assert _echo_works(assoc)
        assert store_on(assoc, make_cr_chest()) == status.SUCCESS
    finally:
        assoc.release()


def store_on(assoc: Association, ds: Dataset) -> int:
    return int(assoc.send_c_store(ds).Status)


def test_query_retrieve_contexts_are_refused_at_negotiation(node: Node) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(QR_FIND)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.settings.port, ae_title="CXR_NODE")
    try:
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    finally:
        assoc.release()


# --- wrong patient ----------------------------------------------------------------------------


def _patient(ds: Dataset, patient_id: str, name: str, birth: str | None = None) -> Dataset:
    ds.PatientID = patient_id
    ds.PatientName = name
    if birth is not None:
        ds.PatientBirthDate = birth
    return ds


def _history(node: Node, study_uid: str) -> list[str]:
    return [str(detail) for _, _, detail in node.ledger.events_of(safe_key(study_uid))]


def test_another_patients_image_under_known_uids_is_refused_and_recorded(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first = _patient(make_cr_chest(), "PAT-A", "ALPHA^ANNA", "19700101")
    assert store(node, first) == status.SUCCESS
    original = node.spool.instance_path(first.StudyInstanceUID, first.SOPInstanceUID).read_bytes()

    same_sop = _patient(make_cr_chest(), "PAT-B", "BETA^BERT", "19800202")
    same_sop.StudyInstanceUID = first.StudyInstanceUID
    same_sop.SOPInstanceUID = same_sop.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    same_sop.PixelData = bytes(len(first.PixelData))
    assert store(node, same_sop) == status.PATIENT_CONFLICT == 0xC003

    same_study = _patient(make_cr_chest(), "PAT-B", "BETA^BERT")
    same_study.StudyInstanceUID = first.StudyInstanceUID
    assert store(node, same_study) == status.PATIENT_CONFLICT

    other_study = _patient(make_cr_chest(), "PAT-C", "GAMMA^GUS")
    other_study.SOPInstanceUID = other_study.file_meta.MediaStorageSOPInstanceUID = (
        first.SOPInstanceUID
    )
    assert store(node, other_study) == status.PATIENT_CONFLICT

    key = safe_key(first.StudyInstanceUID)
    assert [i.sop_instance_uid for i in node.ledger.instances_of(key)] == [first.SOPInstanceUID]
    path = node.spool.instance_path(first.StudyInstanceUID, first.SOPInstanceUID)
    assert path.read_bytes() == original
    assert node.ledger.study(safe_key(other_study.StudyInstanceUID)) is None
    assert node.files_of(other_study.StudyInstanceUID) == []
    assert _history(node, first.StudyInstanceUID).count("PATIENT_CONFLICT: instance refused") == 3
    conflicts = node.ledger.patient_conflicts()
    assert sorted(c.known_as for c in conflicts) == [
        "SOP Instance",
        "Study Instance",
        "Study Instance",
    ]
    assert {c.calling_ae for c in conflicts} == {"MODALITY"}
    assert {c.study_key for c in conflicts} == {key}
    for secret in ("PAT-A", "PAT-B", "PAT-C", "ALPHA", "BETA", "GAMMA", "19700101", "19800202"):
        assert secret not in caplog.text
    assert "PATIENT_CONFLICT" in caplog.text


def test_the_same_patient_with_missing_values_is_not_a_conflict(node: Node) -> None:
    first = _patient(make_cr_chest(), "PAT-A", "ALPHA^ANNA", "19700101")
    assert store(node, first) == status.SUCCESS
    second = make_cr_chest()
    second.StudyInstanceUID = first.StudyInstanceUID
    second.PatientID = "PAT-A"
    del second.PatientName  # unknown, not different
    assert store(node, second) == status.SUCCESS
    assert len(node.ledger.instances_of(safe_key(first.StudyInstanceUID))) == 2


# --- the ledger on its own (SQLite and PostgreSQL) ---------------------------------------------


def _record(ledger: Ledger, study: str, sop: str, attributes: StudyAttributes, sha: str) -> Any:
    return ledger.record_instance(
        study_key=study,
        study_uid=study,
        sop_instance_uid=sop,
        sop_class_uid=ComputedRadiographyImageStorage,
        path=f"{study}/{sop}.dcm",
        size=10,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae="MODALITY",
        destinations=[],
        sha256=sha,
        attributes=attributes,
    )


A = StudyAttributes(patient_id="A", patient_name="ALPHA^ANNA", patient_birth_date="19700101")
B = StudyAttributes(patient_id="B", patient_name="BETA^BERT", patient_birth_date="19800202")


def test_ledger_refuses_another_patient_in_a_known_study(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        assert _record(ledger, "1.2.9", "1.2.9.1", A, "aa") is True
        refused = _record(ledger, "1.2.9", "1.2.9.2", B, "bb")
        assert refused == PatientConflict(study_key="1.2.9", known_as="Study Instance")
        replaced = _record(ledger, "1.2.9", "1.2.9.1", B, "cc")
        assert isinstance(replaced, PatientConflict)
        assert [i.sop_instance_uid for i in ledger.instances_of("1.2.9")] == ["1.2.9.1"]
        assert ledger.instance_digest("1.2.9", "1.2.9.1") == "aa"
        details = [detail for _, _, detail in ledger.events_of("1.2.9")]
        assert details.count("PATIENT_CONFLICT: instance refused") == 2
        assert not any("B" in str(d).replace("PATIENT_CONFLICT", "") for d in details)
        # the same patient, a value missing: recorded
        partial = StudyAttributes(patient_id="A")
        assert _record(ledger, "1.2.9", "1.2.9.3", partial, "dd") is True
        assert _record(ledger, "1.2.9", "1.2.9.4", StudyAttributes(), "ee") is True
    finally:
        ledger.close()


def test_ledger_refuses_a_known_sop_instance_of_another_patient_in_another_study(
    ledger_url: str,
) -> None:
    ledger = Ledger(ledger_url)
    try:
        assert _record(ledger, "1.2.8", "1.2.8.1", A, "aa") is True
        refused = _record(ledger, "1.2.7", "1.2.8.1", B, "bb")
        assert refused == PatientConflict(study_key="1.2.8", known_as="SOP Instance")
        assert ledger.study("1.2.7") is None
        assert ledger.patient_conflict("1.2.7", "1.2.8.1", B) is not None
        assert ledger.patient_conflict("1.2.7", "1.2.8.1", A) is None
        assert ledger.record_patient_conflict("1.2.8") is True
        assert ledger.record_patient_conflict("9.9.9") is False
        details = [detail for _, _, detail in ledger.events_of("1.2.8")]
        assert details.count("PATIENT_CONFLICT: instance refused") == 3
    finally:
        ledger.close()
