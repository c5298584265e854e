"""The patient and study attributes a worklist shows, read from a received header.

PS3.3 C.7.1.1 (Patient), C.7.2.1 (General Study), C.7.3.1 (General Series), C.8.11.x (DX),
and the order: C.4.10 Request Attributes, at the top level or in the first request item.
Values are kept as text, cut to a sane length, and never logged; a value that cannot be read
is left out rather than failing the store.
"""

from __future__ import annotations

import json

from pydicom import Dataset

from cxr_node.ledger import StudyAttributes

MAX_VALUE_CHARS = 256
"""Longer than any valid value of these VRs (PN 3x64+, LO 64, SH 16): a longer one is cut."""

_KEYWORDS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "patient_sex": "PatientSex",
    "patient_birth_date": "PatientBirthDate",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
    "issuer_of_patient_id": "IssuerOfPatientID",
}
_REQUESTED = {
    "placer_order_number": "PlacerOrderNumberImagingServiceRequest",
    "filler_order_number": "FillerOrderNumberImagingServiceRequest",
    "requested_procedure_priority": "RequestedProcedurePriority",
    "requested_procedure_description": "RequestedProcedureDescription",
}


def _text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
        text = "" if value is None else str(value)
    except Exception:  # an undecodable value (bad character set, say): left out
        return None
    text = text.replace("\x00", "").strip()
    return text[:MAX_VALUE_CHARS] or None


def requested(dataset: Dataset, keyword: str) -> str | None:
    """A Request Attributes value (PS3.3 C.4.10): at the top level, else in the first request
    item that has it."""
    value = _text(dataset, keyword)
    if value:
        return value
    try:
        items = list(dataset.get("RequestAttributesSequence", []) or [])
    except Exception:  # an unreadable sequence: left out
        return None
    for item in items:
        value = _text(item, keyword)
        if value:
            return value
    return None


def procedure_code(dataset: Dataset) -> dict[str, str] | None:
    """The first Requested Procedure Code Sequence item with a value and a scheme."""
    try:
        items = list(dataset.get("RequestedProcedureCodeSequence", []) or [])
    except Exception:
        return None
    for item in items:
        value, scheme = _text(item, "CodeValue"), _text(item, "CodingSchemeDesignator")
        if value and scheme:
            return {"value": value, "scheme": scheme, "meaning": _text(item, "CodeMeaning") or ""}
    return None


def read_study_attributes(dataset: Dataset) -> StudyAttributes:
    """The worklist and order attributes of one instance's header (missing or unreadable
    ones: None)."""
    values = {field: _text(dataset, kw) for field, kw in _KEYWORDS.items()}
    values |= {field: requested(dataset, kw) for field, kw in _REQUESTED.items()}
    code = procedure_code(dataset)
    values["requested_procedure_code_json"] = json.dumps(code) if code else None
    return StudyAttributes(**values)
