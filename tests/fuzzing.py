"""Fuzz cases shared by the suite (``tests/integration/test_fuzz.py``) and the long run
(``bench/fuzz.py``): what a hostile or broken sender can put on the wire and in a file.

Four families, all deterministic for a seed (a NumPy ``Generator`` per case, UIDs derived
from the seed, never ``generate_uid()`` at random):

* structure-aware mutations of a real radiograph with pydicom (:data:`STRUCTURE_MUTATIONS`):
  header values of the wrong VR or length (written as raw bytes, so pydicom's writer never
  corrects them), hostile UIDs, Specific Character Sets, windows, LUTs, pixel module values,
  unknown VRs in private tags, 2 MB strings, missing attributes;
* byte-level mutations of a Part 10 file (:data:`BYTE_MUTATIONS`, the suite's original six,
  and :data:`MORE_BYTE_MUTATIONS`);
* deflated data sets (Deflated Explicit VR Little Endian): a normal one, a bomb (about 1 MB
  that inflates to over 1 GiB), garbage, a cut stream (:data:`DEFLATE_MUTATIONS`);
* raw PDUs over plain sockets (PS3.8 9.3): hand-built A-ASSOCIATE-RQ, P-DATA-TF and A-ABORT,
  so that lengths and fields can lie (:class:`RawPeer`, :func:`associate_rq` ...).

Nothing here starts a node or asserts anything: the callers decide what an outcome means.
"""

from __future__ import annotations

import contextlib
import io
import re
import select
import socket
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
import pydicom.encaps
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

T = TypeVar("T")

Mutation = Callable[[bytes, int, np.random.Generator], bytes]
"""A byte-level mutation: (Part 10 file, offset of its data set, generator) -> mutated file."""

StructureMutation = Callable[[Dataset, np.random.Generator], str]
"""A structure-aware mutation: changes the data set in place and says which variant it chose."""

NODE_AE_TITLE = "CXR_NODE"
CALLING_AE_TITLE = "MODALITY"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.12"

BASES = (
    "dwv/gdcm-CR-MONO1-10-chest.dcm",
    "pylibjpeg-data/RG1_J2KI.dcm",
    "orthanc-tests/Monochrome1-Jpeg.dcm",
    "torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "nhsx-nccid/nih_gcp_DX_1.3.6.1.4.1.11129.5.5.1105...888.dcm",
)
"""Real radiographs of the corpus (CHEST-FRONTAL, accepted) that the mutations start from:
native Explicit and Implicit VR, JPEG 2000, JPEG baseline; CR and Secondary Capture."""

NATIVE_BASES = (BASES[0], BASES[4])
"""The bases whose pixel data are not encapsulated (a deflated data set starts from one)."""


# --- Part 10 helpers ---------------------------------------------------------------------------


def file_meta(data: bytes) -> tuple[Dataset, int]:
    """A Part 10 file's meta information and where its data set starts."""
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    meta = pydicom.filereader._read_file_meta_info(stream)
    return meta, stream.tell()


def split_part10(data: bytes) -> tuple[int, str]:
    """Where the data set starts after preamble and file meta, and the syntax the meta claims
    (the data set may say otherwise)."""
    meta, start = file_meta(data)
    return start, str(meta.TransferSyntaxUID)


def seeded_uid(*parts: object) -> str:
    """A UID that depends only on ``parts`` (a seed, a case number, a role)."""
    return str(generate_uid(entropy_srcs=[str(part) for part in parts]))


@lru_cache(maxsize=16)
def _base_bytes(path: Path) -> bytes:
    return path.read_bytes()


def read_base(path: Path) -> Dataset:
    """A fresh, mutable copy of a base file (read once per process)."""
    return pydicom.dcmread(io.BytesIO(_base_bytes(path)))


def renew(dataset: Dataset, *uid_parts: object) -> Dataset:
    """The data set as a new instance in a new study and series (so each case is its own),
    its UIDs derived from ``uid_parts``."""
    dataset.StudyInstanceUID = seeded_uid(*uid_parts, "study")
    dataset.SeriesInstanceUID = seeded_uid(*uid_parts, "series")
    dataset.SOPInstanceUID = seeded_uid(*uid_parts, "sop")
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def to_part10(dataset: Dataset) -> bytes:
    """The data set as a Part 10 file, in its file meta's transfer syntax (deflated when it
    says so). Written element by element: raw elements go out as they are (that is how the
    structure mutations keep invalid values), and the file meta stays as it is (pydicom's own
    writer would copy the data set's SOP Class and Instance UIDs into it, hostile or not)."""
    meta = dataset.file_meta
    syntax = UID(str(meta.TransferSyntaxUID))
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = syntax.is_implicit_VR, syntax.is_little_endian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dataset.original_encoding == (syntax.is_implicit_VR, syntax.is_little_endian):
            charset = dataset.original_character_set or "iso8859"
            encoding = charset if isinstance(charset, str) else list(charset)
            for tag in sorted(dataset.keys()):
                if tag.element == 0 and tag.group > 6:
                    continue  # no retired group lengths
                write_data_element(body, dataset.get_item(tag), encoding)
        else:  # another encoding (a deflated copy of an implicit VR file): pydicom converts
            write_dataset(body, dataset)
    data = body.getvalue()
    if syntax.is_deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        data += b"\0" * (len(data) % 2)
    return head.getvalue() + data


def fresh(base: Path, *uid_parts: object) -> bytes:
    """The base file as a new instance in a new study (its UIDs from ``uid_parts``)."""
    return to_part10(renew(read_base(base), *uid_parts))


def rewrite(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    """Read a Part 10 file, change the data set, write it again."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    change(dataset)
    return to_part10(dataset)


def sop_class_of(data: bytes) -> str:
    """The SOP Class UID the file meta names (CR storage when it names none)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta, _ = file_meta(data)
        return str(meta.get("MediaStorageSOPClassUID", ComputedRadiographyImageStorage))
    except Exception:
        return ComputedRadiographyImageStorage


# --- byte-level mutations (the suite's original six first) -------------------------------------


def truncate(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(start, len(data)))]


def flip_bytes(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    mutable = bytearray(data)
    for position in rng.integers(start, len(data), size=int(rng.integers(1, 64))):
        mutable[position] ^= int(rng.integers(1, 256))
    return bytes(mutable)


def absurd_size(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    rows, columns = (int(v) for v in rng.choice([0, 1, 3, 65535, 40000, 16384], size=2))

    def change(dataset: Dataset) -> None:
        dataset.Rows, dataset.Columns = rows, columns

    return rewrite(data, change)


def lying_syntax(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """The file meta names one transfer syntax; the data set stays encoded in another."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    actual = meta.TransferSyntaxUID
    lies = [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000) if s != actual]
    meta.TransferSyntaxUID = lies[int(rng.integers(0, len(lies)))]
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + data[start:]


def deep_nesting(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """Append (FFFA,FFFA) sequences nested thousands deep, in undefined-length items (written
    by hand: pydicom's own writer cannot go that deep)."""
    depth = int(rng.integers(500, 5000))
    implicit = (
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        .file_meta["TransferSyntaxUID"]
        .value
        == ImplicitVRLittleEndian
    )
    undefined = 0xFFFFFFFF
    if implicit:
        opening = struct.pack("<HHI", 0xFFFA, 0xFFFA, undefined)
    else:
        opening = struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, undefined)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, undefined)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data + (opening + item) * depth + closing * depth


def huge_length(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    mutable = bytearray(data)
    # explicit VR little endian headers with a 4-byte length: tag, VR, 2 reserved, length
    headers = [m.start() for m in re.finditer(rb"(OB|OW|SQ|UN|UT)\x00\x00", data[start:])]
    if not headers:
        return truncate(data, start, rng)
    at = start + headers[int(rng.integers(0, len(headers)))] + 4
    struct.pack_into("<I", mutable, at, int(rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000])))
    return bytes(mutable)


def insert_bytes(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """Random bytes (1 B to 4 KiB) inserted somewhere in the data set."""
    at = int(rng.integers(start, len(data)))
    junk = rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    return data[:at] + junk + data[at:]


def delete_range(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """A range (1 B to 4 KiB) of the data set taken out: everything after it shifts."""
    at = int(rng.integers(start, len(data)))
    return data[:at] + data[at + int(rng.integers(1, 4096)) :]


def corrupt_tags(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """Element headers (tag, VR, length) of the first 4 KiB overwritten with random values."""
    mutable = bytearray(data)
    window = min(len(data) - 8, start + 4096)
    for _ in range(int(rng.integers(1, 8))):
        at = int(rng.integers(start, max(start + 1, window)))
        mutable[at : at + 8] = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes()
    return bytes(mutable[: len(data)])


BYTE_MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "absurd_size": absurd_size,
    "lying_syntax": lying_syntax,
    "deep_nesting": deep_nesting,
    "huge_length": huge_length,
}
"""The suite's original byte-level mutations (``tests/integration/test_fuzz.py``)."""

MORE_BYTE_MUTATIONS: dict[str, Mutation] = {
    "insert_bytes": insert_bytes,
    "delete_range": delete_range,
    "corrupt_tags": corrupt_tags,
}


def byte_case(base: Path, rng: np.random.Generator, *uid_parts: object) -> tuple[str, bytes]:
    """One byte-level case: (mutation name, mutated file)."""
    mutations = BYTE_MUTATIONS | MORE_BYTE_MUTATIONS
    name = str(rng.choice(sorted(mutations)))
    data = fresh(base, *uid_parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return name, mutations[name](data, split_part10(data)[0], rng)


# --- structure-aware mutations (pydicom) -------------------------------------------------------


def put_raw(dataset: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Set an element to raw bytes, written as they are whatever the VR says (odd lengths,
    text in numbers, over-long values: pydicom neither validates nor pads them)."""
    implicit, little = dataset.original_encoding
    dataset[tag] = RawDataElement(
        Tag(tag),
        vr,
        len(value),
        value,
        0,
        True if implicit is None else bool(implicit),
        True if little is None else bool(little),
    )


def _pick(rng: np.random.Generator, options: SequenceOf[T]) -> T:
    return options[int(rng.integers(0, len(options)))]


def _hostile_uid(rng: np.random.Generator) -> tuple[str, bytes]:
    digits = "".join(str(int(d)) for d in rng.integers(0, 10, size=int(rng.integers(65, 200))))
    options: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("over 64", ("1." + digits).encode()),
        ("65 KB", b"1." + b"2" * 65000),
        ("nul", b"1.2.3\x004.5"),
        ("newline", b"1.2.3\nFORGED cxr_node: stored instance 1.2.3"),
        ("multi-valued", b"1.2.3.4\\1.2.3.5"),
        ("letters", b"aux.1"),
        ("leading zero", b"1.02.3"),
        ("trailing dot", b"1.2.3."),
        ("spaces", b" 1.2 .3 "),
        ("high bytes", b"1.2.\xff\xfe"),
    ]
    return options[int(rng.integers(0, len(options)))]


def mutate_uid(dataset: Dataset, rng: np.random.Generator) -> str:
    """A UID in the data set (not the file meta: the C-STORE command stays valid) is empty,
    over 64 characters, has a NUL or newline, is multi-valued or not a UID at all."""
    name = str(
        _pick(
            rng,
            [
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPClassUID",
                "FrameOfReferenceUID",
                "ReferencedSOPInstanceUID",
            ],
        )
    )
    variant, value = _hostile_uid(rng)
    if name == "ReferencedSOPInstanceUID":
        item = Dataset()
        item.ReferencedSOPClassUID = ComputedRadiographyImageStorage
        put_raw(item, 0x00081155, "UI", value)
        dataset.SourceImageSequence = Sequence([item])
    else:
        put_raw(dataset, int(Tag(name)), "UI", value)
    return f"{name}={variant}"


def mutate_charset(dataset: Dataset, rng: np.random.Generator) -> str:
    """Specific Character Set empty, unknown, multi-valued without code extensions, or a
    known one that the names' bytes do not follow."""
    charset = _pick(
        rng,
        [
            b"",
            b"ISO 2022 IR 149",
            b"ISO_IR 100\\ISO_IR 192",
            b"FOO_BAR ",
            b"ISO 2022 IR 87\\ISO 2022 IR 13",
            b"\\",
            b"ISO_IR 192",
            b"GB18030\\ISO_IR 100",
            b"ISO_IR 6\x00",
        ],
    )
    text = _pick(
        rng,
        [
            rng.integers(0x80, 0x100, size=24, dtype=np.uint8).tobytes(),
            b"\x1b$)C\xb1\xe8\xc8\xf1\xb5\xbf^\x1b$)C\xb1\xe6",
            b"\xc3\x28\xa0\xa1^\xe2\x28\xa1",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
        ],
    )
    put_raw(dataset, 0x00080005, "CS", charset)
    target = _pick(rng, [0x00100010, 0x00080080, 0x00081030, 0x0008103E])
    put_raw(dataset, target, "PN" if target == 0x00100010 else "LO", text)
    return f"charset={charset[:24]!r}"


def mutate_window(dataset: Dataset, rng: np.random.Generator) -> str:
    """Window Width 0, negative, text, empty, infinite, over-long; a VOI LUT Function that
    does not exist."""
    width = _pick(
        rng,
        [
            b"0 ",
            b"-100",
            b"abc ",
            b"",
            b"1e400 ",
            b"nan ",
            b"0\\-5",
            b"inf ",
            b"1" * 40,
            b"1e-300",
        ],
    )
    put_raw(dataset, 0x00281051, "DS", width)
    if rng.random() < 0.5:
        put_raw(dataset, 0x00281050, "DS", _pick(rng, [b"abc ", b"", b"1e400 ", b"1\\2\\3 "]))
    if rng.random() < 0.3:
        put_raw(dataset, 0x00281056, "CS", _pick(rng, [b"SIGMOID ", b"FOO ", b""]))
    return f"width={width[:12]!r}"


def _lut_item(
    rng: np.random.Generator, entries: int, first: int, bits: int, data: bytes
) -> Dataset:
    item = Dataset()
    put_raw(item, 0x00283002, "US", struct.pack("<HHH", entries, first & 0xFFFF, bits))
    put_raw(item, 0x00283006, "OW", data)
    if rng.random() < 0.5:
        item.LUTExplanation = "FUZZ"
    return item


def mutate_lut(dataset: Dataset, rng: np.random.Generator) -> str:
    """A VOI or Modality LUT whose descriptor does not match its data (too few or too many
    entries, 0 meaning 65536, 32 bits, a negative first value), or rescale values that are
    text, zero or absurd."""
    variant = _pick(rng, ["voi", "modality", "rescale", "presentation"])
    if variant in ("voi", "modality"):
        entries = _pick(rng, [0, 1, 16, 256, 4096, 65535])
        bits = _pick(rng, [0, 8, 12, 16, 32, 64])
        first = _pick(rng, [0, -1000, 65535, 2**15])
        count = int(rng.integers(0, 600))
        data = rng.integers(0, 65536, size=count, dtype=np.uint16).astype("<u2").tobytes()
        if rng.random() < 0.2:
            data += b"\x01"  # an odd length
        item = _lut_item(rng, entries, first, bits, data)
        if variant == "voi":
            dataset.VOILUTSequence = Sequence([item])
            for keyword in ("WindowCenter", "WindowWidth"):
                if rng.random() < 0.5 and keyword in dataset:
                    del dataset[keyword]
        else:
            item.ModalityLUTType = "US"
            dataset.ModalityLUTSequence = Sequence([item])
        return f"{variant} entries={entries} bits={bits} first={first} data={count}"
    if variant == "rescale":
        slope = _pick(rng, [b"abc ", b"0 ", b"-1", b"1e300 ", b"", b"nan "])
        put_raw(dataset, 0x00281053, "DS", slope)
        put_raw(dataset, 0x00281052, "DS", _pick(rng, [b"x ", b"-1e308", b"0 "]))
        return f"rescale slope={slope!r}"
    shape = _pick(rng, [b"FOO ", b"INVERSE ", b"", b"IDENTITY\\INVERSE"])
    put_raw(dataset, 0x20500020, "CS", shape)
    return f"presentation lut shape={shape!r}"


def mutate_pixel_module(dataset: Dataset, rng: np.random.Generator) -> str:
    """Bits Allocated, Bits Stored, High Bit, Pixel Representation, Samples per Pixel and
    Photometric Interpretation in combinations that do not fit together or the data."""
    changes = []
    fields = {
        "BitsAllocated": (0x00280100, [0, 1, 8, 12, 16, 32, 64, 65535]),
        "BitsStored": (0x00280101, [0, 1, 8, 12, 16, 17, 32, 40]),
        "HighBit": (0x00280102, [0, 7, 15, 16, 31, 65535]),
        "PixelRepresentation": (0x00280103, [0, 1, 2, 65535]),
        "SamplesPerPixel": (0x00280002, [0, 2, 3, 4]),
        "PlanarConfiguration": (0x00280006, [0, 1, 7]),
    }
    for name in rng.choice(sorted(fields), size=int(rng.integers(1, 4)), replace=False):
        tag, values = fields[str(name)]
        value = _pick(rng, values)
        put_raw(dataset, tag, "US", struct.pack("<H", value))
        changes.append(f"{name}={value}")
    if rng.random() < 0.4:
        photometric = _pick(
            rng,
            [b"", b"RGB ", b"PALETTE COLOR ", b"MONOCHROME3 ", b"YBR_FULL", b"MONOCHROME1\\2 "],
        )
        put_raw(dataset, 0x00280004, "CS", photometric)
        changes.append(f"Photometric={photometric!r}")
    return ",".join(changes)


def mutate_wrong_vr(dataset: Dataset, rng: np.random.Generator) -> str:
    """A header value of the wrong VR or length: text where numbers go and numbers where text
    goes, odd lengths, values over their VR's maximum, dates that are not dates."""
    options: list[tuple[str, int, str, bytes]] = [
        ("Rows", 0x00280010, "US", b"abc"),
        ("Rows", 0x00280010, "UL", struct.pack("<I", 70000)),
        ("Rows", 0x00280010, "DS", b"512 "),
        ("Columns", 0x00280011, "US", b""),
        ("NumberOfFrames", 0x00280008, "IS", b"abc "),
        ("NumberOfFrames", 0x00280008, "IS", b"-1"),
        ("NumberOfFrames", 0x00280008, "IS", b"0 "),
        ("NumberOfFrames", 0x00280008, "IS", b"99999999"),
        ("InstanceNumber", 0x00200013, "IS", b"1.5 "),
        ("PixelSpacing", 0x00280030, "DS", b"a\\b "),
        ("ImagerPixelSpacing", 0x00181164, "DS", b"0\\0 "),
        ("StudyDate", 0x00080020, "DA", b"20261399"),
        ("PatientBirthDate", 0x00100030, "DA", b"notadate"),
        ("PatientAge", 0x00101010, "AS", b"999Y"),
        ("Modality", 0x00080060, "CS", b"X" * 40),
        ("BodyPartExamined", 0x00180015, "CS", b"CHEST" * 400),
        ("ViewPosition", 0x00185101, "CS", b"\x00\x01"),
        ("PatientSex", 0x00100040, "CS", b"\xff\xfe"),
        ("ImageType", 0x00080008, "CS", b"\\\\\\"),
        ("PatientOrientation", 0x00200020, "CS", b"L\\F\\X\\Y\\Z "),
        ("AccessionNumber", 0x00080050, "SH", b"A" * 300),
        ("StudyTime", 0x00080030, "TM", b"256199"),
    ]
    name, tag, vr, value = options[int(rng.integers(0, len(options)))]
    put_raw(dataset, tag, vr, value)
    return f"{name} as {vr} {value[:16]!r}"


def mutate_private(dataset: Dataset, rng: np.random.Generator) -> str:
    """Private elements with an unknown VR, without a private creator, or of odd length."""
    vr = _pick(rng, ["ZZ", "??", "xx", "\x00\x00", "UN", "OB", "SQ", "UI"])
    size = _pick(rng, [0, 1, 3, 64, 1000, 4095])
    value = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    put_raw(dataset, 0x00091010, vr, value)  # before its creator: pydicom keeps it raw
    if rng.random() < 0.7:
        dataset.add_new(0x00090010, "LO", "FUZZ CREATOR")
    if rng.random() < 0.3:
        put_raw(dataset, 0x00110010 + int(rng.integers(0, 0xF0)) * 0x100, vr, value)
    return f"vr={vr!r} length={size}"


def mutate_huge_string(dataset: Dataset, rng: np.random.Generator) -> str:
    """A 2 MB (or 65 KB) value in an attribute that allows 64 characters."""
    name, tag, vr = [
        ("PatientName", 0x00100010, "PN"),
        ("StudyDescription", 0x00081030, "LO"),
        ("InstitutionName", 0x00080080, "LO"),
        ("PatientID", 0x00100020, "LO"),
        ("SeriesDescription", 0x0008103E, "LO"),
    ][int(rng.integers(0, 5))]
    size = _pick(rng, [2 * 1024 * 1024, 65534])
    kind = int(rng.integers(0, 3))
    if kind == 0:
        value = b"A" * size
    elif kind == 1:
        value = rng.integers(0x20, 0x7F, size=size, dtype=np.uint8).tobytes()
    else:
        value = (b"DOE^JOHN=" * (size // 9 + 1))[:size]
    put_raw(dataset, tag, vr, value)
    return f"{name} {size} bytes"


def mutate_missing(dataset: Dataset, rng: np.random.Generator) -> str:
    """Required attributes left out."""
    names = [
        "Rows",
        "Columns",
        "PixelData",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "SamplesPerPixel",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "PatientID",
        "Modality",
    ]
    gone = [str(n) for n in rng.choice(names, size=int(rng.integers(1, 4)), replace=False)]
    for name in gone:
        if name in dataset:
            del dataset[name]
    return "-" + ",-".join(gone)


def mutate_pixel_data(dataset: Dataset, rng: np.random.Generator) -> str:
    """Pixel Data shorter or longer than the pixel module says, of odd length, or (for an
    encapsulated image) fragments that are not what the transfer syntax says."""
    if "PixelData" not in dataset:
        return "no pixel data"
    data = dataset.PixelData
    compressed = dataset.file_meta.TransferSyntaxUID.is_compressed
    variant = int(rng.integers(0, 3))
    if compressed:
        if variant == 0:
            # the Basic Offset Table item, then one fragment of junk
            junk = rng.integers(0, 256, size=int(rng.integers(2, 20000)), dtype=np.uint8)
            fragment = junk.tobytes()[: len(junk) // 2 * 2]
            put_raw(dataset, 0x7FE00010, "OB", pydicom.encaps.encapsulate([fragment]))
            return "one junk fragment"
        if variant == 1:
            put_raw(dataset, 0x7FE00010, "OB", data[: int(rng.integers(8, max(9, len(data))))])
            return "encapsulation cut"
        put_raw(dataset, 0x7FE00010, "OB", b"\x00" * 1000)
        return "native bytes under an encapsulated syntax"
    if variant == 0:
        dataset.PixelData = data[: int(rng.integers(0, len(data)))]
        return "short"
    if variant == 1:
        dataset.PixelData = data + data[: int(rng.integers(1, len(data)))]
        return "long"
    put_raw(dataset, 0x7FE00010, "OB", data[:-1])
    return "odd length"


def mutate_sequences(dataset: Dataset, rng: np.random.Generator) -> str:
    """Code and reference sequences with empty items, missing or 2 KB code values."""
    variant = int(rng.integers(0, 3))
    item = Dataset()
    if variant == 0:
        dataset.AnatomicRegionSequence = Sequence([Dataset(), item])
        put_raw(item, 0x00080100, "SH", b"X" * 2048)
        return "anatomic region: empty item, 2 KB code value"
    if variant == 1:
        item.CodeMeaning = "no scheme"
        dataset.ViewCodeSequence = Sequence([item] * int(rng.integers(1, 50)))
        return "view code without value or scheme"
    dataset.ReferencedStudySequence = Sequence([Dataset() for _ in range(int(rng.integers(1, 30)))])
    return "referenced study: empty items"


STRUCTURE_MUTATIONS: dict[str, StructureMutation] = {
    "uid": mutate_uid,
    "charset": mutate_charset,
    "window": mutate_window,
    "lut": mutate_lut,
    "pixel_module": mutate_pixel_module,
    "wrong_vr": mutate_wrong_vr,
    "private": mutate_private,
    "huge_string": mutate_huge_string,
    "missing": mutate_missing,
    "pixel_data": mutate_pixel_data,
    "sequences": mutate_sequences,
}


def structure_case(base: Path, rng: np.random.Generator, *uid_parts: object) -> tuple[str, bytes]:
    """One structure-aware case: one mutation (two in one case of five) of a fresh copy of
    ``base``; returns (name[+name], file) and keeps the file meta valid, so that the C-STORE
    command names a valid SOP Instance UID whatever the data set holds."""
    dataset = renew(read_base(base), *uid_parts)
    count = 2 if rng.random() < 0.2 else 1
    names = [str(n) for n in rng.choice(sorted(STRUCTURE_MUTATIONS), size=count, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            STRUCTURE_MUTATIONS[name](dataset, rng)
    return "+".join(names), to_part10(dataset)


def patient_conflict_pair(
    base: Path, rng: np.random.Generator, *uid_parts: object
) -> tuple[str, bytes, bytes]:
    """Two instances of different patients under the same UIDs: (variant, patient A's file,
    patient B's file). B re-uses A's SOP Instance UID (and study), or only A's Study Instance
    UID with a new SOP Instance UID; B's Patient ID, name or birth date differs."""
    first = renew(read_base(base), *uid_parts)
    first.PatientID = f"FUZZ-A-{seeded_uid(*uid_parts, 'pid')[-8:]}"
    first.PatientName = "FUZZ^PATIENT^A"
    first.PatientBirthDate = "19700101"
    second = read_base(base)
    second.StudyInstanceUID = first.StudyInstanceUID
    variant = _pick(rng, ["same SOP Instance UID", "same Study Instance UID"])
    if variant == "same SOP Instance UID":
        second.SeriesInstanceUID = first.SeriesInstanceUID
        second.SOPInstanceUID = first.SOPInstanceUID
    else:
        second.SeriesInstanceUID = seeded_uid(*uid_parts, "series-b")
        second.SOPInstanceUID = seeded_uid(*uid_parts, "sop-b")
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID
    second.PatientID, second.PatientName, second.PatientBirthDate = (
        first.PatientID,
        first.PatientName,
        first.PatientBirthDate,
    )
    differs = _pick(rng, ["PatientID", "PatientName", "PatientBirthDate"])
    setattr(
        second,
        differs,
        {"PatientID": "FUZZ-B", "PatientName": "FUZZ^PATIENT^B"}.get(differs, "19800202"),
    )
    return f"{variant}, {differs} differs", to_part10(first), to_part10(second)


# --- deflated data sets ------------------------------------------------------------------------


def _deflated_file(meta_source: Dataset, deflated_body: bytes) -> bytes:
    """Preamble, file meta naming Deflated Explicit VR Little Endian, then ``deflated_body``
    as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_source.SOPClassUID
    meta.MediaStorageSOPInstanceUID = meta_source.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + deflated_body


def _explicit_header(dataset: Dataset) -> bytes:
    """The data set without its Pixel Data, Explicit VR Little Endian, not deflated."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    header = Dataset()
    for element in dataset:
        if element.tag < 0x7FE00010:
            header.add(element)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(buffer, header)
    return buffer.getvalue()


@lru_cache(maxsize=1)
def _zeros_deflated() -> tuple[bytes, bytes, bytes]:
    """(first block, repeated block, tail) of a raw deflate stream of zero bytes, in 1 MiB
    blocks with a full flush after each: every block after the first compresses to
    the same bytes, so a 1 GiB stream is made in milliseconds, not seconds."""
    block = b"\0" * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, repeated, compressor.flush()


def deflate_bomb(dataset: Dataset, inflated_bytes: int = (1 << 30) + (64 << 20)) -> bytes:
    """About 1 MB on the wire that inflates to over 1 GiB: a valid header, then Pixel Data
    declaring ``inflated_bytes`` of zeros (a valid data set, only absurdly large)."""
    blocks = inflated_bytes >> 20
    header = _explicit_header(dataset) + struct.pack(
        "<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, blocks << 20
    )
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    # after a full flush the compressor's history is reset: the zero blocks of another
    # stream splice in as they are
    first, repeated, tail = _zeros_deflated()
    return _deflated_file(dataset, start + first + repeated * (blocks - 1) + tail)


def deflated_normal(dataset: Dataset) -> bytes:
    """The data set written as Deflated Explicit VR Little Endian by pydicom."""
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return to_part10(dataset)


def deflate_garbage(dataset: Dataset, rng: np.random.Generator) -> bytes:
    """A file meta naming the deflated syntax, then random bytes (64 KB to 1 MB)."""
    size = _pick(rng, [65536, 262144, 1 << 20])
    return _deflated_file(dataset, rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())


def deflate_cut(dataset: Dataset, rng: np.random.Generator) -> bytes:
    """A valid deflated data set cut short, or with junk after the end of its stream."""
    data = deflated_normal(dataset)
    start, _ = split_part10(data)
    if rng.random() < 0.5:
        return data[: int(rng.integers(start + 1, len(data)))]
    return data + rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes()


DEFLATE_MUTATIONS = ("normal", "bomb", "garbage", "cut")


def deflate_case(
    base: Path, rng: np.random.Generator, *uid_parts: object, variant: str | None = None
) -> tuple[str, bytes]:
    """One deflated case from a native base: (variant, file)."""
    variant = variant or str(rng.choice(DEFLATE_MUTATIONS, p=[0.35, 0.15, 0.3, 0.2]))
    dataset = renew(read_base(base), *uid_parts)
    if variant == "normal":
        return variant, deflated_normal(dataset)
    if variant == "bomb":
        return variant, deflate_bomb(dataset)
    if variant == "garbage":
        return variant, deflate_garbage(dataset, rng)
    return variant, deflate_cut(dataset, rng)


# --- C-STORE commands with hostile values ------------------------------------------------------

MISSING = "<missing>"

HOSTILE_COMMAND_UIDS: dict[str, str] = {
    "empty": "",
    "missing": MISSING,
    "nul": "1.2.3\x004.5",
    "newline": "1.2.3\nFORGED cxr_node: stored instance 1.2.3 of study 1.2.3",
    "carriage return": "1.2.3\r4",
    "too long": "1." + "2" * 500,
    "65 KB": "1." + "2" * 65000,
    "letters": "1.2.abc",
    "multi-valued": "1.2.3\\1.2.4",
}
"""Affected SOP Instance (or Class) UID values for a C-STORE request, the command itself."""


# --- raw PDUs (PS3.8 9.3) ---------------------------------------------------------------------

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {
    A_ASSOCIATE_RQ: "A-ASSOCIATE-RQ",
    A_ASSOCIATE_AC: "A-ASSOCIATE-AC",
    A_ASSOCIATE_RJ: "A-ASSOCIATE-RJ",
    P_DATA_TF: "P-DATA-TF",
    A_RELEASE_RQ: "A-RELEASE-RQ",
    A_RELEASE_RP: "A-RELEASE-RP",
    A_ABORT: "A-ABORT",
}


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def _uid_bytes(uid: str) -> bytes:
    return uid.encode("ascii", "replace")


def pdu(kind: int, body: bytes) -> bytes:
    """A PDU: type, reserved, 4-byte big-endian length, body."""
    return struct.pack(">BBI", kind, 0, len(body)) + body


def associate_rq(
    called: str = NODE_AE_TITLE,
    calling: str = CALLING_AE_TITLE,
    contexts: list[tuple[int, str, list[str]]] | None = None,
    max_pdu: int = 16384,
    extra_items: bytes = b"",
    protocol_version: int = 1,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU made by hand: ``contexts`` are (id, abstract syntax, transfer
    syntaxes); default: CR storage in Explicit VR Little Endian (id 1) and Verification
    (id 3). ``extra_items`` go after the user information item, as they are."""
    contexts = contexts or [
        (1, ComputedRadiographyImageStorage, [ExplicitVRLittleEndian]),
        (3, VERIFICATION, [ImplicitVRLittleEndian]),
    ]
    items = _item(0x10, _uid_bytes(APPLICATION_CONTEXT))
    for context_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid_bytes(abstract))
        for syntax in syntaxes:
            sub += _item(0x40, _uid_bytes(syntax))
        items += _item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(
        0x52, _uid_bytes(IMPLEMENTATION_CLASS_UID)
    )
    items += _item(0x50, user) + extra_items
    fixed = struct.pack(">HH", protocol_version, 0)
    fixed += called.encode()[:16].ljust(16) + calling.encode()[:16].ljust(16) + b"\0" * 32
    return pdu(A_ASSOCIATE_RQ, fixed + items)


def accepted_contexts(ac_body: bytes) -> dict[int, str]:
    """The presentation contexts an A-ASSOCIATE-AC body accepts: {id: transfer syntax}."""
    accepted: dict[int, str] = {}
    at = 68
    while at + 4 <= len(ac_body):
        kind, _, length = struct.unpack(">BBH", ac_body[at : at + 4])
        data = ac_body[at + 4 : at + 4 + length]
        if kind == 0x21 and len(data) >= 4 and data[2] == 0:
            syntax = ""
            if len(data) >= 8 and data[4] == 0x40:
                (sub_length,) = struct.unpack(">H", data[6:8])
                syntax = data[8 : 8 + sub_length].rstrip(b"\0").decode("ascii", "replace")
            accepted[data[0]] = syntax
        at += 4 + length
    return accepted


def pdv(context_id: int, data: bytes, command: bool, last: bool) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1, E.2)."""
    header = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return struct.pack(">IBB", len(data) + 2, context_id, header) + data


def p_data(context_id: int, data: bytes, command: bool, last: bool) -> bytes:
    """A P-DATA-TF PDU carrying one PDV."""
    return pdu(P_DATA_TF, pdv(context_id, data, command, last))


def a_abort(source: int = 0, reason: int = 0) -> bytes:
    return pdu(A_ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def a_release_rq() -> bytes:
    return pdu(A_RELEASE_RQ, b"\0\0\0\0")


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", group, element, len(value)) + value


def c_store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (Implicit VR Little Endian, PS3.7 9.3.1.1) with a data set."""
    body = (
        _element(0x0000, 0x0002, sop_class.encode())
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0001))
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0700, struct.pack("<H", 0))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0000))
        + _element(0x0000, 0x1000, sop_instance.encode())
    )
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def command_set(command_field: int | None, message_id: int = 1) -> bytes:
    """A command set with the given Command Field (none at all when None), a Message ID and
    no data set: what a DIMSE provider must answer or abort, whatever the field says."""
    body = _element(0x0000, 0x0002, ComputedRadiographyImageStorage.encode())
    if command_field is not None:
        body += _element(0x0000, 0x0100, struct.pack("<H", command_field))
    body += _element(0x0000, 0x0110, struct.pack("<H", message_id))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def c_echo_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 9.3.5.1), no data set."""
    body = (
        _element(0x0000, 0x0002, VERIFICATION.encode())
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0030))
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
    )
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


@dataclass
class Received:
    """What came back on a raw connection: a PDU, the connection closed, or nothing yet."""

    what: str
    """"pdu", "closed" (orderly or reset) or "timeout"."""
    kind: int | None = None
    body: bytes = b""
    seconds: float = 0.0

    def describe(self) -> str:
        if self.what != "pdu":
            return self.what
        name = PDU_NAMES.get(self.kind or 0, f"PDU type 0x{self.kind or 0:02X}")
        if self.kind == A_ASSOCIATE_RJ and len(self.body) >= 4:
            return f"{name} ({self.body[1]}/{self.body[2]}/{self.body[3]})"
        if self.kind == A_ABORT and len(self.body) >= 4:
            return f"{name} (source {self.body[2]}, reason {self.body[3]})"
        return name


class RawPeer:
    """A plain TCP client that speaks PDUs by hand (and can lie in them). Every call is
    bounded in time; nothing raises on a closed or reset connection."""

    def __init__(self, port: int, host: str = "127.0.0.1", connect_timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.started = time.monotonic()
        self.sent = 0
        self.closed = False

    def send(self, data: bytes, timeout: float = 5.0) -> str:
        """'ok', 'closed' (the node closed or reset it) or 'stalled' (the node does not read
        and the socket buffers are full)."""
        if self.closed:
            return "closed"
        self.sock.settimeout(timeout)
        view = memoryview(data)
        try:
            while view:
                n = self.sock.send(view)
                self.sent += n
                view = view[n:]
        except TimeoutError:
            return "stalled"
        except OSError:
            return "closed"
        return "ok"

    def answered(self) -> bool:
        """Whether the node has sent something (or closed) that is not read yet."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def stream(self, data: bytes, total: int, deadline: float) -> str:
        """Send ``data`` again and again, ``total`` bytes in all, until done, the node answers
        (an A-ABORT, say) or closes, stops reading, or ``deadline`` (monotonic) passes: 'ok',
        'answered', 'closed', 'stalled' or 'deadline'."""
        left = total
        while left > 0:
            if self.answered():
                return "answered"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "deadline"
            piece = data[: min(len(data), left)]
            outcome = self.send(piece, timeout=min(3.0, remaining))
            if outcome != "ok":
                return outcome
            left -= len(piece)
        return "ok"

    def _read(self, count: int, deadline: float) -> bytes | None:
        """Exactly ``count`` bytes; b'' when the connection closed; None at the deadline."""
        chunks: list[bytes] = []
        got = 0
        while got < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(min(count - got, 1 << 20))
            except TimeoutError:
                return None
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return b""
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def receive(self, timeout: float, max_body: int = 1 << 20) -> Received:
        """The next PDU (its body cut at ``max_body``), or 'closed', or 'timeout'."""
        began = time.monotonic()
        deadline = began + timeout
        header = self._read(6, deadline)
        if header is None:
            return Received("timeout", seconds=time.monotonic() - began)
        if len(header) < 6:
            return Received("closed", seconds=time.monotonic() - began)
        kind, _, length = struct.unpack(">BBI", header)
        body = self._read(min(length, max_body), deadline) or b""
        return Received("pdu", kind, body, time.monotonic() - began)

    def wait_closed(self, timeout: float) -> Received:
        """Read (and drop) whatever comes until the node closes or ``timeout`` passes; the
        last PDU seen is kept in the answer."""
        began = time.monotonic()
        last = Received("timeout")
        while True:
            left = timeout - (time.monotonic() - began)
            if left <= 0:
                return Received("timeout", last.kind, last.body, time.monotonic() - began)
            got = self.receive(left)
            if got.what != "pdu":
                return Received(got.what, last.kind, last.body, time.monotonic() - began)
            last = got

    def associate(
        self,
        timeout: float = 10.0,
        contexts: list[tuple[int, str, list[str]]] | None = None,
        calling: str = CALLING_AE_TITLE,
    ) -> tuple[Received, dict[int, str]]:
        """Send an A-ASSOCIATE-RQ (see :func:`associate_rq`) and read the answer."""
        self.send(associate_rq(calling=calling, contexts=contexts))
        answer = self.receive(timeout)
        accepted = accepted_contexts(answer.body) if answer.kind == A_ASSOCIATE_AC else {}
        return answer, accepted

    def close(self, reset: bool = False) -> None:
        """Close; with ``reset``, send a TCP RST instead of a FIN (SO_LINGER 0)."""
        with contextlib.suppress(OSError):
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        self.closed = True


@contextlib.contextmanager
def raw_peer(port: int) -> Iterator[RawPeer]:
    peer = RawPeer(port)
    try:
        yield peer
    finally:
        peer.close()


@dataclass
class FuzzFile:
    """One mutated file: what made it, and its bytes."""

    family: str
    kind: str
    data: bytes
    notes: dict[str, str] = field(default_factory=dict)


def analysis_file(
    corpus: Path, seed: int, index: int, weights: dict[str, float] | None = None
) -> FuzzFile:
    """The ``index``-th analysis case of ``seed``: a structure-aware (most), byte-level or
    deflated mutation of one of :data:`BASES`."""
    rng = np.random.default_rng([seed, 2, index])
    weights = weights or {"structure": 0.62, "bytes": 0.28, "deflate": 0.10}
    family = str(rng.choice(sorted(weights), p=[weights[k] for k in sorted(weights)]))
    parts = (seed, "analysis", index)
    if family == "deflate":
        base = corpus / NATIVE_BASES[int(rng.integers(0, len(NATIVE_BASES)))]
        variant = str(rng.choice(DEFLATE_MUTATIONS, p=[0.4, 0.05, 0.3, 0.25]))
        kind, data = deflate_case(base, rng, *parts, variant=variant)
    else:
        base = corpus / BASES[int(rng.integers(0, len(BASES)))]
        maker = structure_case if family == "structure" else byte_case
        kind, data = maker(base, rng, *parts)
    return FuzzFile(family, kind, data, {"base": base.name})
