"""The source's header as a result object keeps it (PS3.3 A.35.13, A.8.1; PS3.5 6.2): the
Patient and Study attributes highdicom copies, only values valid for their VR, identity UIDs
checked (a result cannot be filed without them), and names and sex restored verbatim where
highdicom would rewrite them. Shared by the SR, the SC and the "not analysed" SR."""

from __future__ import annotations

import re

import pydicom
import pydicom.config
import pydicom.datadict
from pydicom.valuerep import DA, DT, TM, VR, validate_value

from cxr_node.errors import RejectedInput

from .copies import clone_element

_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_VERBATIM = ("PatientName", "ReferringPhysicianName", "PatientSex")
_SEXES = ("M", "F", "O", "")


def _explicit_name(value: object) -> str:
    """A one-component name with its trailing caret (PS3.5 6.2.1.2: same name)."""
    text = str(value)
    return text if text == "" or "^" in text else f"{text}^"


def header_view(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source without pixels, in the shape highdicom's constructors accept, holding only
    values valid for their VR (:func:`keep_valid_values`), to be written as ISO_IR 192.

    highdicom reads Patient/Study attributes (and the Modality of an image it references)
    unconditionally, warns on one-component person names and rejects unknown sexes. Absent
    Type 2 attributes become empty (what the standard asks of the output); names and sex are
    only made acceptable here and written back verbatim by ``restore_verbatim``. Elements of a
    VR pydicom does not know (a private ``ZZ``, a VR garbled in the file) are not copied:
    their value cannot be read.

    Text is decoded with the source's Specific Character Set; when that is empty, unknown (a
    defined term misspelt, ``ISO 2022 IR 149`` without escapes) or multi-valued without code
    extensions, pydicom's fallback applies (the first usable term, else ISO_IR 100 / Latin-1,
    undecodable bytes replaced). The view is then UTF-8 (ISO_IR 192), which holds any decoded
    text, so our results always declare a valid character set.
    """
    view = pydicom.Dataset()
    for tag in source.keys():  # noqa: SIM118 (iterating a Dataset converts raw elements)
        if tag == 0x7FE00010 or tag.group == 0x0002 or not _convertible(source, tag):
            continue
        element = source[tag]
        try:
            view.add(clone_element(element))
        except Exception:  # a value pydicom cannot convert: not copied
            continue
    keep_valid_values(view)
    view.SpecificCharacterSet = "ISO_IR 192"
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in view:
            setattr(view, keyword, None)
    if "Modality" not in view:  # highdicom reads it of every source image it references
        view.Modality = ""
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if view[keyword].value is not None:
            setattr(view, keyword, _explicit_name(view[keyword].value))
    if view.PatientSex not in _SEXES and view.PatientSex is not None:
        view.PatientSex = ""
    _blank_values_invalid_for_their_vr(view)
    return view


UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
"""PS3.5 9.1: components of digits, no leading zero unless the component is a single 0."""
_IDENTITY_UIDS = {
    "StudyInstanceUID": "INVALID_STUDY_UID",
    "SeriesInstanceUID": "INVALID_SOURCE_UID",
    "SOPInstanceUID": "INVALID_SOURCE_UID",
    "SOPClassUID": "INVALID_SOURCE_UID",
}
"""UIDs a result must reference as they are: invalid, the result cannot be made (the reason
code); any other invalid UI value is left out of the results."""
_MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "PN": 64}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CS = re.compile(r"^[A-Z0-9 _]*$")


def valid_uid(value: object) -> bool:
    """A UID as PS3.5 9.1 allows: digits and dots, no empty component, at most 64 chars."""
    return isinstance(value, str) and len(value) <= 64 and bool(UID_PATTERN.match(value))


def _written_length(text: str) -> int:
    """The length of a value as our results write it (UTF-8, ISO_IR 192), which is what
    validators such as dciodvfy compare with the VR's maximum: equal to the number of
    characters for ASCII; a character outside it (an accented letter, a kanji, the replacement
    character of an undecodable byte) takes 2 to 4."""
    return len(text.encode("utf-8", errors="replace"))


def valid_text(vr: str, value: object) -> bool:
    """One string value fits its VR: length as written (per component group for PN), no
    control characters (we write no escapes), CS in its repertoire."""
    text = str(value)
    limit = _MAX_CHARS.get(vr)
    if vr == "PN":
        groups = text.split("=")
        return (
            len(groups) <= 3
            and all(_written_length(g) <= 64 for g in groups)
            and not _CONTROL.search(text)
        )
    if vr in {"LT", "ST", "UT"}:
        plain = text.translate({ord(c): None for c in "\r\n\t\f"})
        maximum = {"LT": 10240, "ST": 1024}.get(vr, 2**31)
        return not _CONTROL.search(plain) and _written_length(text) <= maximum
    if limit is not None and (_written_length(text.strip(" ")) > limit or _CONTROL.search(text)):
        return False
    return not (vr == "CS" and not _CS.match(text))


def _element_values(element: pydicom.DataElement) -> list[object]:
    value = element.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def keep_valid_values(view: pydicom.Dataset, *, item: bool = False) -> None:
    r"""Leave out of ``view`` (in place) the values our results would copy invalid:
    UIDs not matching ``^[0-9]+(\.[0-9]+)*$`` or over 64 characters, strings over their VR's
    length (in bytes as written, UTF-8) or with control characters, several values where the
    dictionary allows one, elements of a VR pydicom cannot read, and sequence items that are not
    complete (:func:`_keep_complete_items`). Required identity UIDs that are absent or invalid
    raise RejectedInput (INVALID_STUDY_UID, INVALID_SOURCE_UID): a result in a made-up study or
    about a made-up image would be false. ``item``: ``view`` is a sequence item (no identity
    UIDs to require there)."""
    for tag in list(view.keys()):
        if tag.is_private or not _convertible(view, tag):
            del view[tag]
            continue
        element = view[tag]
        if element.VR == "UN":
            del view[tag]
            continue
        if element.VR == "SQ":
            _keep_complete_items(view, element)
            continue
        if element.value is None:
            continue
        keyword = element.keyword
        values = _element_values(element)
        if element.VR == "UI":
            identity = not item and keyword in _IDENTITY_UIDS
            if not all(valid_uid(v) for v in values) or (identity and len(values) != 1):
                if identity:
                    raise RejectedInput(
                        _IDENTITY_UIDS[keyword],
                        f"the source's {keyword} is not a valid UID: no result can reference it",
                    )
                del view[element.tag]
            continue
        try:
            single = pydicom.datadict.dictionary_VM(element.tag) == "1"
        except KeyError:
            single = False
        if single and len(values) > 1:
            element.value = ""
            continue
        checked = element.VR in _MAX_CHARS or element.VR in {"LT", "ST", "UT"}
        if checked and not all(valid_text(element.VR, v) for v in values if v not in (None, "")):
            element.value = ""
    if not item:
        for keyword, reason_code in _IDENTITY_UIDS.items():
            if not view.get(keyword):
                raise RejectedInput(
                    reason_code, f"the source has no {keyword}: no result can reference it"
                )


def identity_uid(source: pydicom.Dataset, keyword: str) -> str:
    """One of the source's identity UIDs (``_IDENTITY_UIDS``) as results reference it;
    RejectedInput (the keyword's reason code) when it is absent or not a valid UID."""
    value = source.get(keyword) if _convertible(source, keyword) else None
    if not valid_uid(value):
        raise RejectedInput(
            _IDENTITY_UIDS[keyword],
            f"the source's {keyword} is absent or not a valid UID: no result can reference it",
        )
    return str(value)


_KNOWN_VRS = frozenset(VR.__members__.values())


def _convertible(dataset: pydicom.Dataset, key: int | str) -> bool:
    """Whether pydicom can read the element's value: its VR is one pydicom knows (a raw
    element of explicit VR ``ZZ``, or one garbled in the file, raises NotImplementedError when
    read); checked on the raw element, before pydicom converts it."""
    tag = pydicom.datadict.tag_for_keyword(key) if isinstance(key, str) else key
    if tag is None or tag not in dataset:
        return True
    vr = dataset.get_item(tag, keep_deferred=True).VR
    return vr is None or vr in _KNOWN_VRS  # None: implicit VR, pydicom's dictionary decides


_SOP_REFERENCE = ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID")
_ITEM_TYPE1: dict[str, tuple[str, ...]] = {
    "ReferencedStudySequence": _SOP_REFERENCE,  # General Study (PS3.3 C.7.2.1)
    "ReferencedPatientSequence": _SOP_REFERENCE,  # Patient (PS3.3 C.7.1.1)
    "OtherPatientIDsSequence": ("PatientID", "TypeOfPatientID"),  # Patient
}
"""Sequences (besides code sequences) whose items the results may copy, and the Type 1
attributes each item must hold."""


def _complete_item(keyword: str, item: pydicom.Dataset) -> bool:
    """An item of sequence ``keyword`` holds (non-empty) the Type 1 attributes of its macro:
    a code (PS3.3 8.8: Code Meaning, and a Code Value with its Coding Scheme Designator, a Long
    Code Value with it, or a URN Code Value) or those in ``_ITEM_TYPE1``."""
    if keyword.endswith("CodeSequence"):
        if not item.get("CodeMeaning"):
            return False
        if item.get("URNCodeValue"):
            return True
        coded = item.get("CodeValue") or item.get("LongCodeValue")
        return bool(coded) and bool(item.get("CodingSchemeDesignator"))
    return all(item.get(name) for name in _ITEM_TYPE1[keyword])


def _keep_complete_items(dataset: pydicom.Dataset, element: pydicom.DataElement) -> None:
    """Keep of a sequence only the items that are complete once their invalid values are left
    out (an empty item, a code without its meaning, a reference without its UIDs would make
    the result invalid); a sequence with none left, or one whose items we cannot check, is left
    out (the sequences the results copy from the source are all Type 3)."""
    keyword = element.keyword
    if not (keyword.endswith("CodeSequence") or keyword in _ITEM_TYPE1):
        del dataset[element.tag]
        return
    kept = []
    for item in element.value or ():
        keep_valid_values(item, item=True)
        if _complete_item(keyword, item):
            kept.append(item)
    if kept:
        element.value = kept
    else:
        del dataset[element.tag]


_TEMPORAL_VRS = {"DA": DA, "TM": TM, "DT": DT}
_TEXT_VRS = {"AE", "AS", "CS", "LO", "SH"}  # not UI: identity must be kept as sent


def _blank_values_invalid_for_their_vr(view: pydicom.Dataset) -> None:
    """Empty top-level values the result would copy but their VR forbids (PS3.5 6.2): dates and
    times that do not parse (e.g. "1970-01-31"), which highdicom refuses, and strings too long
    for their VR (a 56-character Accession Number, SH), which would make the result invalid.
    An empty Type 2 value says "unknown"; a truncated one would say something false."""
    for element in view:
        if not element.value:
            continue
        parse = _TEMPORAL_VRS.get(element.VR)
        try:
            if parse is not None and element.VM == 1:
                parse(str(element.value), validation_mode=pydicom.config.RAISE)
            elif element.VR in _TEXT_VRS:
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    validate_value(element.VR, value, pydicom.config.RAISE)
        except (ValueError, TypeError):
            element.value = ""


def restore_verbatim(result: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Write the source's own person names and sex into the result (same Patient module)."""
    for keyword in _VERBATIM:
        if keyword not in source:
            continue
        try:
            element = source[keyword]
            values = _element_values(element)
        except Exception:  # unreadable in the source: what header_view made of it stays
            continue
        if element.VR not in {"PN", "CS"} or isinstance(values[0], (bytes, bytearray)):
            continue
        if len(values) == 1 and all(valid_text(element.VR, v) for v in values if v):
            value = values[0]
            setattr(result, keyword, "" if value is None else str(value))
