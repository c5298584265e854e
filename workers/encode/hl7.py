"""ORU^R01 (HL7 v2.5.1, chapter 7) with a study's AI result, for a RIS or reporting worklist.

MSH, PID (from the source header), ORC and OBR (accession number, placer and filler order
numbers where the header has them, the procedure), NTE saying the result is AI-generated and
not a diagnosis (and DEMO when it is), TQ1 with the priority, then OBX rows: the abnormality
score (NM), the triage priority (CWE), and each finding (NM probability coded as in the SR,
OBX-7 its operating threshold, OBX-8 ``A`` present or ``N`` absent, OBX-18 the model's device
UID). A study that was not analysed gets an ORU with one ST OBX saying so, and why.

Segments are written as text, every value escaped with python-hl7 (``\\F\\``, ``\\S\\`` ...), and
the message is parsed back with python-hl7 before it leaves, so a malformed one never does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import hl7
from pydicom import Dataset

from cxr_node.dicom.attributes import procedure_code, requested
from cxr_node.jobs import CodedConcept, ModelInfo
from cxr_node.ledger import StudyAttributes

VERSION = "2.5.1"
PRIVATE_SCHEME = "99CXRNODE"
PRIORITY_RANK = {"S": 3, "A": 2, "R": 1}
"""HL7 table 0485 priorities we use, by urgency: stat, as soon as possible, routine."""
DICOM_PRIORITY = {"STAT": "S", "HIGH": "A", "MEDIUM": "R", "ROUTINE": "R", "LOW": "R"}
"""Requested Procedure Priority (0040,1003) as an HL7 priority."""


_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(value: object) -> str:
    """A value with HL7's delimiters escaped (HL7 v2.5.1 section 2.7.1), line breaks as
    ``\\.br\\``; other characters as they are, the message being UTF-8 (MSH-18). python-hl7's
    own escape writes every non-ASCII character as a hexadecimal escape, which UTF-8 needs not."""
    text = "" if value is None else str(value)
    text = "".join(ch for ch in text if ch in "\r\n" or (ord(ch) >= 32 and ord(ch) != 127))
    for delimiter, sequence in _ESCAPES:
        text = text.replace(delimiter, sequence)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\\.br\\".join(lines)


@dataclass(frozen=True)
class OrderContext:
    """What the source header says of the patient and the order (PS3.3 C.7.1.1, C.4.10)."""

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    procedure_code: CodedConcept | None = None
    procedure_text: str = ""
    order_priority: str | None = None
    study_uid: str = ""


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _requested(dataset: Dataset, keyword: str) -> str:
    return requested(dataset, keyword) or ""


def order_context(dataset: Dataset) -> OrderContext:
    """The order and patient of a source image, read from its header."""
    found = procedure_code(dataset)
    code = CodedConcept.model_validate(found) if found else None
    priority = DICOM_PRIORITY.get(_requested(dataset, "RequestedProcedurePriority").upper())
    return OrderContext(
        patient_id=_text(dataset, "PatientID"),
        issuer_of_patient_id=_text(dataset, "IssuerOfPatientID"),
        patient_name=_text(dataset, "PatientName"),
        birth_date=_text(dataset, "PatientBirthDate"),
        sex=_text(dataset, "PatientSex"),
        accession_number=_text(dataset, "AccessionNumber"),
        placer_order_number=_requested(dataset, "PlacerOrderNumberImagingServiceRequest"),
        filler_order_number=_requested(dataset, "FillerOrderNumberImagingServiceRequest"),
        procedure_code=code,
        procedure_text=_requested(dataset, "RequestedProcedureDescription")
        or _text(dataset, "StudyDescription"),
        order_priority=priority,
        study_uid=_text(dataset, "StudyInstanceUID"),
    )


def order_from_attributes(attributes: StudyAttributes, study_uid: str) -> OrderContext:
    """The order as the ledger kept it from the header (:func:`order_context`'s values), for a
    message sent after retention purged the source files."""
    code = None
    if attributes.requested_procedure_code_json:
        with contextlib.suppress(ValueError):
            code = CodedConcept.model_validate_json(attributes.requested_procedure_code_json)
    priority = DICOM_PRIORITY.get((attributes.requested_procedure_priority or "").upper())
    return OrderContext(
        patient_id=attributes.patient_id or "",
        issuer_of_patient_id=attributes.issuer_of_patient_id or "",
        patient_name=attributes.patient_name or "",
        birth_date=attributes.patient_birth_date or "",
        sex=attributes.patient_sex or "",
        accession_number=attributes.accession_number or "",
        placer_order_number=attributes.placer_order_number or "",
        filler_order_number=attributes.filler_order_number or "",
        procedure_code=code,
        procedure_text=attributes.requested_procedure_description
        or attributes.study_description
        or "",
        order_priority=priority,
        study_uid=study_uid,
    )


@dataclass(frozen=True)
class FindingResult:
    """One finding of the study: its highest probability over the images, as the SR says."""

    code: CodedConcept
    label: str
    probability: float
    threshold: float
    present: bool


@dataclass(frozen=True)
class Sender:
    """MSH-3 to MSH-6."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str


def highest(priorities: Iterable[str | None]) -> str | None:
    """The most urgent of the priorities given (S > A > R), or None."""
    known = [p for p in priorities if p in PRIORITY_RANK]
    return max(known, key=PRIORITY_RANK.__getitem__) if known else None


def control_id(study_uid: str, content: str) -> str:
    """MSH-10, 20 characters at most (HL7 2.5.1 MSH-10 ST(20)): a hash of the study and of the
    message's content without its times, so a resend of the same result is recognisable and
    any change (findings, score, priority asked, patient, order) gets a new one."""
    digest = hashlib.sha256(f"{study_uid}|{content}".encode()).hexdigest()
    return "CXR" + digest[:17].upper()


_CANONICAL_MOMENT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _assemble(
    sender: Sender,
    order: OrderContext,
    moment: dt.datetime | None,
    body: Callable[[dt.datetime], list[str]],
) -> str:
    """MSH and PID, then ``body``; the control ID from the content at a fixed time."""
    canonical = "\r".join(
        [*_header(sender, "", _CANONICAL_MOMENT, order), *body(_CANONICAL_MOMENT)]
    )
    control = control_id(order.study_uid, canonical)
    moment = moment or dt.datetime.now(dt.UTC)
    return checked([*_header(sender, control, moment, order), *body(moment)])


def _hl7_name(dicom_name: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^
    prefix), each component escaped."""
    parts = (dicom_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(p) for p in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def _cwe(code: CodedConcept) -> str:
    return f"{escape(code.value)}^{escape(code.meaning)}^{escape(code.scheme)}"


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _header(sender: Sender, control: str, moment: dt.datetime, order: OrderContext) -> list[str]:
    sex = order.sex if order.sex in {"M", "F", "O", "U"} else "U"
    patient = f"{escape(order.patient_id)}^^^{escape(order.issuer_of_patient_id)}^MR"
    return [
        "|".join(
            [
                "MSH",
                "^~\\&",
                escape(sender.sending_application),
                escape(sender.sending_facility),
                escape(sender.receiving_application),
                escape(sender.receiving_facility),
                _timestamp(moment),
                "",
                "ORU^R01^ORU_R01",
                control,
                "P",
                VERSION,
                "",
                "",
                "",  # MSH-15, MSH-16 empty: original acknowledgement mode (AA, AE, AR)
                "",
                "",
                "UNICODE UTF-8",
            ]
        ),
        f"PID|1||{patient}||{_hl7_name(order.patient_name)}||{escape(order.birth_date)}|{sex}",
    ]


def _order(order: OrderContext, moment: dt.datetime) -> list[str]:
    placer = escape(order.placer_order_number)
    filler = escape(order.filler_order_number or order.accession_number)
    procedure = (
        _cwe(order.procedure_code)
        if order.procedure_code is not None
        else f"^{escape(order.procedure_text or 'Chest radiograph')}"
    )
    obr = ["OBR", "1", placer, filler, procedure] + [""] * 21  # OBR-0 .. OBR-25
    obr[7] = _timestamp(moment)  # OBR-7 observation date/time: when the AI read the study
    obr[18] = escape(order.accession_number)  # OBR-18 placer field 1: the accession number
    obr[22] = _timestamp(moment)  # OBR-22 results report/status change date/time
    obr[25] = "F"  # OBR-25 result status: final
    return [f"ORC|RE|{placer}|{filler}||CM", "|".join(obr)]


def _notice(model: ModelInfo | None) -> str:
    text = "AI-generated result"
    if model is not None:
        text += f" ({model.name} {model.version})"
    text += "; not a diagnosis and not for diagnostic use: a radiologist reads the images."
    if model is not None and model.demo:
        text += " DEMO MODEL - NOT TRAINED: results are for demonstration and testing only."
    return f"NTE|1|L|{escape(text)}"


def _obx(
    index: int, kind: str, code: str, value: str, *, units: str = "", reference: str = "",
    flag: str = "", method: str = "", equipment: str = "",
) -> str:  # fmt: skip
    fields = ["OBX", str(index), kind, code, str(index), value, units, reference, flag]
    fields += ["", "", "F", "", "", "", "", "", method, equipment]
    return "|".join(fields).rstrip("|")


def oru_result(
    *,
    sender: Sender,
    order: OrderContext,
    model: ModelInfo,
    score: float,
    priority: str,
    hl7_priority: str,
    findings: Sequence[FindingResult],
    moment: dt.datetime | None = None,
) -> str:
    """The ORU^R01 of an analysed study (segments joined by carriage returns)."""
    method = f"AI^{escape(model.name)} {escape(model.version)}^{PRIVATE_SCHEME}"
    equipment = escape(model.device_uid)
    rows = [
        _obx(1, "NM", f"ABNSCORE^AI abnormality score^{PRIVATE_SCHEME}", f"{score:.4f}",
             units="1^^UCUM", reference="0-1", method=method, equipment=equipment),
        _obx(2, "CWE", f"TRIAGE^AI triage priority^{PRIVATE_SCHEME}",
             f"{escape(priority)}^{escape(priority.capitalize())}^{PRIVATE_SCHEME}",
             method=method, equipment=equipment),
    ]  # fmt: skip
    for offset, finding in enumerate(findings):
        rows.append(
            _obx(
                3 + offset,
                "NM",
                _cwe(finding.code),
                f"{finding.probability:.4f}",
                units="1^^UCUM",
                reference=f">={finding.threshold:.4f}",
                flag="A" if finding.present else "N",
                method=method,
                equipment=equipment,
            )
        )
    return _assemble(
        sender,
        order,
        moment,
        lambda at: [
            *_order(order, at),
            _notice(model),
            f"TQ1|1||||||||{hl7_priority}^{_PRIORITY_TEXT[hl7_priority]}^HL70485",
            *rows,
        ],
    )


_PRIORITY_TEXT = {"S": "Stat", "A": "ASAP", "R": "Routine"}


def oru_not_analysed(
    *,
    sender: Sender,
    order: OrderContext,
    reason_code: str,
    reason: str,
    moment: dt.datetime | None = None,
) -> str:
    """The ORU^R01 saying the AI did not analyse the study, and why (no priority asked)."""
    text = f"Not analysed by the AI ({escape(reason_code)}): {escape(reason)}"
    return _assemble(
        sender,
        order,
        moment,
        lambda at: [
            *_order(order, at),
            _notice(None),
            _obx(1, "ST", f"NOTANALYSED^Not analysed by the AI^{PRIVATE_SCHEME}", text),
        ],
    )


def control_of(message: str) -> str:
    """MSH-10 of a message this module built (MSH-1 is the field separator, so it is the tenth
    ``|``-separated value of the first segment)."""
    return message.split("\r", 1)[0].split("|")[9]


def checked(segments: Sequence[str]) -> str:
    """Join and parse back with python-hl7: a message it cannot read never leaves."""
    text = "\r".join(segments)
    message = hl7.parse(text)
    if str(message.segment("MSH")[9]) != "ORU^R01^ORU_R01" or len(message) != len(segments):
        raise ValueError("the ORU^R01 did not parse back as written")
    return text
