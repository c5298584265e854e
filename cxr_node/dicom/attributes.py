"""The patient and study attributes a worklist shows, read from a received header.

PS3.3 C.7.1.1 (Patient), C.7.2.1 (General Study), C.7.3.1 (General Series), C.8.11.x (DX).
Values are kept as text, cut to a sane length, and never logged; a value that cannot be read
is left out rather than failing the store.
"""

from __future__ import annotations

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
}


def _text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
        text = "" if value is None else str(value)
    except Exception:  # an undecodable value (bad character set, say): left out
        return None
    text = text.replace("\x00", "").strip()
    return text[:MAX_VALUE_CHARS] or None


def read_study_attributes(dataset: Dataset) -> StudyAttributes:
    """The worklist attributes of one instance's header (missing or unreadable ones: None)."""
    return StudyAttributes(**{field: _text(dataset, kw) for field, kw in _KEYWORDS.items()})
