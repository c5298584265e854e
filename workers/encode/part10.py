"""PS3.10 file bytes of our result objects, the same bytes pydicom writes, faster.

``Dataset.save_as`` spends ~20 us per data element in generic machinery (a buffer per
element, a character set lookup per element, and ambiguous-VR correction repeated for every
nested item, so quadratic in the depth of an SR tree). Our SRs carry ~2000 elements, so
that dominated encoding. This writer produces the identical byte stream (PS3.10 preamble,
File Meta Information, then the data set in Explicit VR Little Endian, PS3.5 7.1.2) with a
direct path for the common cases: sequences and items (defined lengths, or undefined where
pydicom would use them), text and code strings (ASCII, or through pydicom's own
``encode_string``), decimal / integer strings and binary numbers. Any other element (person
names, dates held as date objects, raw or buffered values, anything unusual) is written by
pydicom's own ``write_data_element``; any other dataset (another transfer syntax, one read
from a file, an ambiguous VR left unresolved) goes entirely through ``dcmwrite``, and so does
every dataset when the installed pydicom is not the series this writer mirrors
(:func:`cxr_node.compat.fast_part10_writer`).
"""

from __future__ import annotations

from contextlib import suppress
from copy import deepcopy
from io import BytesIO
from struct import Struct, pack
from typing import Any

from pydicom.charset import (
    convert_encodings,
    custom_encoders,
    default_encoding,
    encode_string,
    need_tail_escape_sequence_encodings,
    python_encoding,
)
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from cxr_node import compat

_TAG = Struct("<HH")
_US = Struct("<H")
_UL = Struct("<L")
_ITEM = b"\xfe\xff\x00\xe0"
_UNDEFINED_ITEM = _ITEM + b"\xff\xff\xff\xff"
_ITEM_DELIMITER = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_CODE_STRING_VRS = frozenset({"AE", "AS", "CS", "UI", "DA", "DT", "TM"})
"""Written with the default repertoire (PS3.5 6.1.2.3), padded with a space (UI: a NUL)."""
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
"""Written in the dataset's Specific Character Set (PS3.5 6.1.2.3)."""
_NUMBER_VRS = {"FD": "d", "FL": "f", "UL": "L", "US": "H", "SL": "l"}
_NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV"})
_MULTI = (MultiValue, list, tuple)


def _ascii_transparent(codec: str) -> bool:
    """Whether a Python codec writes ASCII text as ASCII bytes (so a fast path is exact)."""
    try:
        return "".join(map(chr, range(128))).encode(codec) == bytes(range(128))
    except (LookupError, UnicodeError):
        return False


_ASCII_CODECS = frozenset(
    codec
    for codec in set(python_encoding.values())
    if codec not in custom_encoders
    and codec not in need_tail_escape_sequence_encodings
    and _ascii_transparent(codec)
)
"""Python codecs of DICOM character sets in which ASCII text is its ASCII bytes, as is."""


class _Fallback(Exception):
    """This dataset must be written by pydicom itself."""


class _Redo(Exception):
    """A raw element or an ambiguous VR: pydicom's VR correction pass must run first.

    Without either anywhere in the tree that pass changes nothing, so it is skipped.
    """


def _ambiguous(element: Any) -> bool:
    return isinstance(element, DataElement) and element.VR is not None and len(element.VR) != 2


def to_part10(dataset: Dataset) -> bytes:
    """The bytes of ``dataset.save_as(buffer, enforce_file_format=True)`` (PS3.10 file)."""
    meta = getattr(dataset, "file_meta", None)
    if (
        not compat.fast_part10_writer()
        or meta is None
        or meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian
        or dataset.original_encoding != (None, None)
        or len(getattr(dataset, "preamble", None) or b"\x00" * 128) != 128
        or any(tag >> 16 in (0, 2) for tag in dataset.keys())  # noqa: SIM118 (tags)
    ):
        return _pydicom_bytes(dataset)
    # What dcmwrite does before it writes: fresh meta, up to date, validated.
    file_meta = deepcopy(meta)
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        current = file_meta.get(meta_keyword)
        value = dataset.get(keyword)
        if current is None or (value and value != current):
            setattr(file_meta, meta_keyword, value)
    validate_file_meta(file_meta, enforce_standard=True)
    if "PixelData" in dataset:
        dataset["PixelData"].is_undefined_length = False  # native pixel data (PS3.5 A.4)
    body = None
    if not any(_ambiguous(element) for element in dataset.values()):
        with suppress(_Redo):
            body = _dataset(dataset, default_encoding, strict=True)
    if body is None:
        # What pydicom does first (and again, to no effect, for every item): resolve VRs.
        correct_ambiguous_vr(dataset, True)
        try:
            body = _dataset(dataset, default_encoding, strict=False)
        except _Fallback:
            return _pydicom_bytes(dataset)
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(getattr(dataset, "preamble", None) or b"\x00" * 128)
    head.write(b"DICM")
    write_file_meta_info(head, file_meta, enforce_standard=True)
    return head.getvalue() + body


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dataset(dataset: Dataset, parent_encoding: str | list[str], *, strict: bool) -> bytes:
    """One data set's elements in tag order, no group lengths (PS3.5 7.2), like pydicom."""
    elements = dataset.items()  # the elements as stored: raw ones are not decoded
    if _CHARSET_TAG in dataset.keys():  # noqa: SIM118 (a view: no Tag conversion)
        charset = dataset.get("SpecificCharacterSet", parent_encoding)
    else:
        charset = parent_encoding
    encodings = _python_encodings(charset)
    parts = []
    if strict:
        for tag, element in sorted(elements):
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue
            if not (type(element) is DataElement and element.VR and len(element.VR) == 2):
                raise _Redo
            parts.append(_element(element, charset, encodings, strict))
        return b"".join(parts)
    # What write_dataset decides: decode raw elements when the encoding or the character set
    # differs from the one they were read in.
    converts = dataset.original_encoding != (False, True) or (
        dataset.original_character_set != compat.written_character_set(dataset)
    )
    get = dataset.__getitem__ if converts else dataset.get_item
    for tag in sorted(dataset.keys()):
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue
        parts.append(_element(get(tag), charset, encodings, strict))
    return b"".join(parts)


def _python_encodings(charset: Any) -> list[str]:
    """pydicom's convert_encodings, remembered per Specific Character Set value."""
    key = tuple(charset) if isinstance(charset, _MULTI) else charset
    try:
        return _ENCODINGS[key]
    except (KeyError, TypeError):
        encodings = convert_encodings(charset or [default_encoding])
    if isinstance(key, str | tuple):
        _ENCODINGS[key] = encodings
    return encodings


_CHARSET_TAG = 0x00080005
_ENCODINGS: dict[Any, list[str]] = {}


def _element(element: Any, charset: Any, encodings: list[str], strict: bool) -> bytes:
    """One element: tag, VR, length, value (PS3.5 7.1.2), or pydicom's encoding of it."""
    if type(element) is not DataElement:
        return _by_pydicom(element, charset)
    vr = element.VR
    if not vr or len(vr) != 2:
        raise _Fallback  # an ambiguous VR pydicom would refuse or resolve its own way
    value = element.value
    if vr == "SQ":
        return _sequence(element, value, encodings, strict)
    if element.is_undefined_length:
        return _by_pydicom(element, charset)
    payload = _value(vr, value, encodings)
    if payload is None:
        return _by_pydicom(element, charset)
    tag = _TAG.pack(element.tag >> 16, element.tag & 0xFFFF)
    if vr in _LONG_VRS:
        return tag + vr.encode() + b"\x00\x00" + _UL.pack(len(payload)) + payload
    if len(payload) > 0xFFFF:
        return _by_pydicom(element, charset)  # pydicom writes it as UN, with a warning
    return tag + vr.encode() + _US.pack(len(payload)) + payload


def _sequence(element: DataElement, items: Any, encodings: list[str], strict: bool) -> bytes:
    parts = []
    for item in items or ():
        content = _dataset(item, encodings, strict=strict)
        if item.is_undefined_length_sequence_item:
            parts.append(_UNDEFINED_ITEM + content + _ITEM_DELIMITER)
        else:
            parts.append(_ITEM + _UL.pack(len(content)) + content)
    body = b"".join(parts)
    tag = _TAG.pack(element.tag >> 16, element.tag & 0xFFFF)
    if element.is_undefined_length:
        return tag + b"SQ\x00\x00\xff\xff\xff\xff" + body + _SEQUENCE_DELIMITER
    return tag + b"SQ\x00\x00" + _UL.pack(len(body)) + body


def _value(vr: str, value: Any, encodings: list[str]) -> bytes | None:
    """The padded value bytes as pydicom writes them, or None: let pydicom write the element.

    An empty value (VM 0: None, "", b"", no values) has no bytes.
    """
    if isinstance(value, str):
        if not value:
            return b""
        if vr in _CODE_STRING_VRS:
            return _code_string(vr, value)
        if vr in _TEXT_VRS:
            return _padded(_text(value, encodings))
        return None
    if value is None:
        return b""
    if isinstance(value, int | float):
        if vr in _NUMBER_STRING_VRS:
            return _number_string((value,))
        number_format = _NUMBER_VRS.get(vr)
        return None if number_format is None else _pack("<" + number_format, value)
    if isinstance(value, bytes):
        if not value:
            return b""
        if vr in _BYTES_VRS:
            return value + b"\x00" if len(value) % 2 else value
        return None
    if isinstance(value, _MULTI):
        return _values(vr, value, encodings)
    return None


def _values(vr: str, values: Any, encodings: list[str]) -> bytes | None:
    """A multi-valued element's bytes (values joined by a backslash, PS3.5 6.4)."""
    if len(values) == 0:
        return b""
    if vr in _CODE_STRING_VRS:
        if all(isinstance(item, str) for item in values):
            return _code_string(vr, "\\".join(values))
        return None  # dates and times as objects: pydicom's formatting
    if vr in _TEXT_VRS:
        if not isinstance(values[0], str):
            return None
        return _padded(b"\\".join(_text(item, encodings) for item in values))
    if vr in _NUMBER_STRING_VRS:
        return _number_string(values)
    number_format = _NUMBER_VRS.get(vr)
    if number_format is None or not hasattr(values, "append"):
        return None  # pydicom packs a tuple as one value (and fails): let it
    return _pack(f"<{len(values)}{number_format}", *values)


def _pack(layout: str, *values: Any) -> bytes | None:
    try:
        return pack(layout, *values)
    except Exception:
        return None  # out of range or not a number: pydicom reports it


def _code_string(vr: str, text: str) -> bytes:
    if len(text) % 2:
        text += "\x00" if vr == "UI" else " "
    return text.encode(default_encoding)


def _number_string(values: Any) -> bytes:
    """DS / IS: the string a value was read or formatted with, else its str (as pydicom)."""
    text = "\\".join(
        item.original_string if hasattr(item, "original_string") else str(item) for item in values
    )
    if len(text) % 2:
        text += " "
    return text.encode(default_encoding)


def _padded(encoded: bytes) -> bytes:
    return encoded + b" " if len(encoded) % 2 else encoded


def _text(value: str, encodings: list[str]) -> bytes:
    """PS3.5 6.1.2.3 text in the first character set; ASCII text needs no code extension."""
    if encodings[0] in _ASCII_CODECS and value.isascii():
        return value.encode("ascii")
    return encode_string(value, encodings)


def _by_pydicom(element: DataElement | RawDataElement, charset: Any) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, element, charset)
    return buffer.getvalue()
