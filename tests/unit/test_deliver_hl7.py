"""HL7 v2.5.1 ORU^R01 results to a RIS over MLLP (issue 15): the message, its acknowledgements
(AA delivered, AE retried, AR failed, silence and a RIS that is down retried), and the never-lower
rule over a sequence of studies and messages. The RIS is python-hl7's MLLP server; the ledger
is real (SQLite and PostgreSQL). Patients and orders are made up."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from pydicom import Dataset

from cxr_node.destination_kinds import Hl7Destination
from cxr_node.dicom.attributes import read_study_attributes
from cxr_node.jobs import CodedConcept, Finding, ImageAnalysis, ModelInfo, Priority
from cxr_node.ledger import DeliveryState, Ledger
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from tests.mllp import MllpListener
from tests.pki import make_pki
from tests.unit._synthetic import make_dx_chest
from workers import delivery
from workers.deliver.hl7 import compose
from workers.encode.hl7 import escape
from workers.runtime import WorkerContext

RIS = "ris"
CHEST = "1.2.840.10008.5.1.4.1.1.1.1"


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger(ledger_url)
    yield opened
    opened.close()


@pytest.fixture
def listener() -> Iterator[MllpListener]:
    ris = MllpListener().start()
    yield ris
    ris.stop()


def _destination(port: int, **extra: object) -> Hl7Destination:
    return Hl7Destination.model_validate(
        {"kind": "hl7", "name": RIS, "host": "127.0.0.1", "port": port, "timeout_seconds": 2}
        | {"receiving_application": "RIS", "receiving_facility": "HOSP"}
        | extra
    )


def _context(ledger: Ledger, spool: Spool, destination: Hl7Destination) -> WorkerContext:
    return cast(
        WorkerContext,
        SimpleNamespace(
            ledger=ledger, spool=spool, pool=None, settings=Settings(destinations=[destination])
        ),
    )


def _pneumothorax(probability: float) -> Finding:
    return Finding(
        label="Pneumothorax",
        code=CodedConcept(value="36118008", scheme="SCT", meaning="Pneumothorax"),
        probability=probability,
        threshold=0.5,
        positive=probability >= 0.5,
    )


def _receive(
    ledger: Ledger,
    spool: Spool,
    key: str,
    order_priority: str | None = None,
    **header: object,
) -> None:
    """A study's source image in the spool (with its order, and ``header`` values) and the
    ledger."""
    dataset = make_dx_chest(64, 64)
    for keyword, value in header.items():
        setattr(dataset, keyword, value)
    dataset.StudyInstanceUID = key
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = f"{key}.1"
    dataset.PatientID, dataset.PatientName = "PID-7|1", "Müller^Anna"
    dataset.AccessionNumber = f"ACC{key[-3:]}"
    dataset.PlacerOrderNumberImagingServiceRequest = f"PL{key[-3:]}"
    if order_priority is not None:
        dataset.RequestedProcedurePriority = order_priority
    path = spool.root / key / f"{key}.1.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    ledger.record_instance(
        study_key=key, study_uid=key, sop_instance_uid=f"{key}.1", sop_class_uid=CHEST,
        path=f"{key}/{key}.1.dcm", size=path.stat().st_size, eligible=True, reason_code=None,
        reason=None, calling_ae="MODALITY", destinations=[RIS],
        attributes=read_study_attributes(dataset),
    )  # fmt: skip


def _analyse(ledger: Ledger, key: str, priority: Priority, probability: float) -> None:
    ledger.mark_queued(key)
    token = ledger.claim(key, lease_seconds=60)
    model = ModelInfo(name="cxr test model", version="1.0", demo=True, members=[], device_uid="1.2")
    analysis = ImageAnalysis(
        sop_instance_uid=f"{key}.1",
        findings=[_pneumothorax(probability)],
        abnormality_score=probability,
        priority=priority,
        model=model,
    )
    assert ledger.record_results(key, [], [RIS], token, analyses=[analysis])


def _deliver(ctx: WorkerContext, destination: Hl7Destination, key: str) -> bool:
    """One attempt now (a destination in backoff is taken as if due, as after the wait)."""
    return delivery._deliver_study(ctx, destination, ctx.ledger.deliveries_of(key)[RIS])


def _state(ledger: Ledger, key: str) -> DeliveryState:
    return ledger.deliveries_of(key)[RIS].state


def test_the_oru_carries_the_result_and_validates_as_hl7_2_5_1(
    ledger: Ledger, tmp_path: Path, listener: MllpListener
) -> None:
    spool = Spool(tmp_path / "spool")
    destination = _destination(listener.port)
    ctx = _context(ledger, spool, destination)
    _receive(ledger, spool, "1.2.3.101")
    _analyse(ledger, "1.2.3.101", Priority.CRITICAL, 0.91)
    assert _deliver(ctx, destination, "1.2.3.101")
    assert _state(ledger, "1.2.3.101") is DeliveryState.DELIVERED
    (message,) = listener.received
    text = str(message)
    assert parse_message(
        text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    ).validate()
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(message.segment("MSH")[12]) == "2.5.1"
    assert str(message.segment("MSH")[5]) == "RIS"
    assert str(message.segment("PID")[3]).startswith(escape("PID-7|1"))
    assert "Müller" in str(message.segment("PID")[5])
    obr = message.segment("OBR")
    assert str(obr[2]) == "PL101" and str(obr[18]) == "ACC101" and str(obr[25]) == "F"
    assert str(message.segment("TQ1")[9]).startswith("S^")  # critical -> stat
    observations = {str(obx[3]).split("^")[0]: obx for obx in message.segments("OBX")}
    assert float(str(observations["ABNSCORE"][5])) == pytest.approx(0.91)
    assert str(observations["TRIAGE"][5]).startswith("critical^")
    assert str(observations["36118008"][5]) == "0.9100" and str(observations["36118008"][8]) == "A"
    note = str(message.segment("NTE")[3])
    assert "not a diagnosis" in note and "DEMO" in note


def test_ae_is_retried_with_the_same_control_id_and_ar_fails_for_good(
    ledger: Ledger, tmp_path: Path, listener: MllpListener
) -> None:
    spool = Spool(tmp_path / "spool")
    destination = _destination(listener.port)
    ctx = _context(ledger, spool, destination)
    for key in ("1.2.3.201", "1.2.3.202"):
        _receive(ledger, spool, key)
        _analyse(ledger, key, Priority.ABNORMAL, 0.7)
    listener.answer = "AE"
    assert _deliver(ctx, destination, "1.2.3.201")  # this study later; the RIS is usable
    deferred = ledger.deliveries_of("1.2.3.201")[RIS]
    assert deferred.state is DeliveryState.PENDING and "AE" in (deferred.last_error or "")
    assert deferred.next_attempt_at is not None and not ledger.destination_states()[RIS].down_since
    listener.answer = "AA"
    assert _deliver(ctx, destination, "1.2.3.201")
    assert _state(ledger, "1.2.3.201") is DeliveryState.DELIVERED
    first, again = listener.received
    assert str(first.segment("MSH")[10]) == str(again.segment("MSH")[10])
    listener.answer = "AR"
    assert _deliver(ctx, destination, "1.2.3.202")  # the destination stays usable
    failed = ledger.deliveries_of("1.2.3.202")[RIS]
    assert failed.state is DeliveryState.FAILED and "AR" in (failed.last_error or "")


def test_silence_and_a_ris_that_is_down_are_retried_until_it_answers(
    ledger: Ledger, tmp_path: Path
) -> None:
    ris = MllpListener(answer=None).start()
    spool = Spool(tmp_path / "spool")
    destination = _destination(ris.port, timeout_seconds=0.5)
    ctx = _context(ledger, spool, destination)
    _receive(ledger, spool, "1.2.3.301")
    _analyse(ledger, "1.2.3.301", Priority.ROUTINE, 0.2)
    try:
        assert not _deliver(ctx, destination, "1.2.3.301")  # no acknowledgement
        assert "acknowledgement" in (ledger.deliveries_of("1.2.3.301")[RIS].last_error or "")
        ris.stop(keep_port=True)
        assert not _deliver(ctx, destination, "1.2.3.301")  # connection refused
        assert _state(ledger, "1.2.3.301") is DeliveryState.PENDING
        ris.answer = "AA"
        ris.start()
        assert _deliver(ctx, destination, "1.2.3.301")
    finally:
        ris.stop()
    assert _state(ledger, "1.2.3.301") is DeliveryState.DELIVERED


def test_a_message_never_asks_for_a_lower_priority(
    ledger: Ledger, tmp_path: Path, listener: MllpListener
) -> None:
    spool = Spool(tmp_path / "spool")
    destination = _destination(listener.port)
    ctx = _context(ledger, spool, destination)
    asked: list[str] = []

    def send(key: str) -> None:
        assert _deliver(ctx, destination, key)
        asked.append(str(listener.received[-1].segment("TQ1")[9]).split("^")[0])

    _receive(ledger, spool, "1.2.3.401")  # critical, then reanalysed as routine: still S
    _analyse(ledger, "1.2.3.401", Priority.CRITICAL, 0.95)
    send("1.2.3.401")
    assert ledger.reprocess("1.2.3.401") is not None
    _analyse(ledger, "1.2.3.401", Priority.ROUTINE, 0.1)
    send("1.2.3.401")
    _receive(ledger, spool, "1.2.3.402", order_priority="STAT")  # a STAT order stays stat
    _analyse(ledger, "1.2.3.402", Priority.ROUTINE, 0.1)
    send("1.2.3.402")
    _receive(ledger, spool, "1.2.3.403", order_priority="ROUTINE")  # the AI may raise it
    _analyse(ledger, "1.2.3.403", Priority.ABNORMAL, 0.7)
    send("1.2.3.403")
    _receive(ledger, spool, "1.2.3.404")  # nothing known before: as mapped
    _analyse(ledger, "1.2.3.404", Priority.ROUTINE, 0.1)
    send("1.2.3.404")
    assert asked == ["S", "S", "S", "A", "R"]
    first, second = listener.received[0], listener.received[1]
    assert str(first.segment("MSH")[10]) != str(second.segment("MSH")[10])  # a new version


def test_the_oru_goes_over_tls_to_a_ris_whose_certificate_is_trusted(
    ledger: Ledger, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    ris = MllpListener(tls=server).start()
    spool = Spool(tmp_path / "spool")
    trusted = _destination(ris.port, tls={"ca_file": str(pki.ca_cert)})
    untrusted = _destination(ris.port, tls={})  # the system's CAs do not know our test CA
    _receive(ledger, spool, "1.2.3.601")
    _analyse(ledger, "1.2.3.601", Priority.ABNORMAL, 0.8)
    try:
        assert not _deliver(_context(ledger, spool, untrusted), untrusted, "1.2.3.601")
        assert "SSL" in (ledger.deliveries_of("1.2.3.601")[RIS].last_error or "")
        assert _deliver(_context(ledger, spool, trusted), trusted, "1.2.3.601")
    finally:
        ris.stop()
    assert len(ris.received) == 1
    assert _state(ledger, "1.2.3.601") is DeliveryState.DELIVERED


def test_the_control_id_is_the_same_for_the_same_content_only() -> None:
    from cxr_node.jobs import ModelInfo as Model
    from workers.encode import hl7 as oru

    order = oru.OrderContext(patient_id="P1", accession_number="A1", study_uid="1.2.3")
    model = Model(name="m", version="1", demo=False, members=[], device_uid="1.2")
    sender = oru.Sender("CXR_NODE", "", "RIS", "")

    def message(priority: str, asked: str, moment_seconds: int) -> hl7.Message:
        import datetime as dt

        moment = dt.datetime.fromtimestamp(moment_seconds, dt.UTC)
        return hl7.parse(
            oru.oru_result(
                sender=sender,
                order=order,
                model=model,
                score=0.5,
                priority=priority,
                hl7_priority=asked,
                findings=[],
                moment=moment,
            )
        )

    first, later = message("abnormal", "A", 1_000), message("abnormal", "A", 9_000)
    raised = message("critical", "S", 1_000)
    control = [str(m.segment("MSH")[10]) for m in (first, later, raised)]
    assert control[0] == control[1] != control[2]
    assert len(control[0]) <= 20
    assert str(first.segment("MSH")[15]) == "" and str(first.segment("MSH")[16]) == ""


def test_a_study_that_was_not_analysed_gets_an_oru_saying_why_when_configured(
    ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    _receive(ledger, spool, "1.2.3.501")
    ledger.mark_queued("1.2.3.501")
    token = ledger.claim("1.2.3.501", lease_seconds=60)
    ledger.mark_failed("1.2.3.501", "PIXELS", "the pixel data could not be decoded", token)
    row = SimpleNamespace(study_key="1.2.3.501", sent_instances=frozenset(), created_at=0.0)
    said = compose(_context(ledger, spool, _destination(9)), _destination(9), row)  # type: ignore[arg-type]
    assert said is not None and said[1] is None  # no priority asked
    message = hl7.parse(said[0])
    (obx,) = message.segments("OBX")
    assert str(obx[2]) == "ST" and "PIXELS" in str(obx[5]) and "decoded" in str(obx[5])
    quiet = _destination(9, not_analysed=False)
    assert compose(_context(ledger, spool, quiet), quiet, row) is None  # type: ignore[arg-type]


def test_a_name_lookup_that_hangs_costs_the_timeout_not_the_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading
    import time

    from workers.deliver.hl7 import send_message
    from workers.deliver.policy import DestinationUnreachable

    released = threading.Event()
    real_lookup = socket.getaddrinfo

    def hanging_lookup(host: str, *args: object, **kwargs: object) -> object:
        if host == "ris.invalid":
            released.wait(30)  # a DNS server that does not answer
        return real_lookup(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    destination = _destination(2575, host="ris.invalid", timeout_seconds=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(DestinationUnreachable, match="acknowledgement in time"):
            send_message(destination, "MSH|^~\\&|CXR|NODE|RIS|HOSP|20261204||ORU^R01|C1|P|2.5.1")
        assert time.monotonic() - started < 5  # asyncio.run waited for the lookup: 30 s
    finally:
        released.set()


def test_a_message_sent_after_the_files_were_purged_still_names_its_order(
    ledger: Ledger, tmp_path: Path, listener: MllpListener
) -> None:
    spool = Spool(tmp_path / "spool")
    destination = _destination(listener.port)
    ctx = _context(ledger, spool, destination)
    key = "1.2.3.701"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "36643-5", "LN", "XR Chest 2V"
    request = Dataset()
    request.FillerOrderNumberImagingServiceRequest = "FI701"  # in the request item only
    _receive(
        ledger,
        spool,
        key,
        order_priority="STAT",  # placer PL701, accession ACC701
        IssuerOfPatientID="HOSP-MRN",
        RequestedProcedureCodeSequence=[code],
        RequestAttributesSequence=[request],
    )
    _analyse(ledger, key, Priority.ROUTINE, 0.2)
    (spool.root / key / f"{key}.1.dcm").unlink()  # retention purged the study's files
    assert _deliver(ctx, destination, key)
    (message,) = listener.received
    orc, obr = message.segment("ORC"), message.segment("OBR")
    assert str(orc[2]) == str(obr[2]) == "PL701"
    assert str(orc[3]) == str(obr[3]) == "FI701"
    assert str(obr[18]) == "ACC701"
    assert str(obr[4]).startswith("36643-5^XR Chest 2V^LN")
    assert str(message.segment("PID")[3]).startswith(escape("PID-7|1") + "^^^HOSP-MRN")
    assert str(message.segment("TQ1")[9]).startswith("S^")  # the order was STAT, the AI routine
