"""Read what the front door needs of a received Part 10 file, with bounded memory and work.

The C-STORE handler needs the header (UIDs, eligibility, study attributes), never the pixels.
Three hostile inputs made that costly (issue 12): a Deflated Explicit VR Little Endian data set
(PS3.5 A.5) of 256 KB that pydicom inflated whole into memory (+510 MB); a 1 MB deflate stream
inflating to a gigabyte of zeros, parsed for minutes as millions of empty elements; and any
large run of tiny elements. So:

- a deflated data set is inflated here, in a stream, to a temporary Part 10 file beside the
  received one (Explicit VR Little Endian, the syntax it deflates), and refused as soon as it
  inflates past ``max_inflated_bytes`` (``max_instance_bytes``); a stream zlib cannot inflate is
  refused as unreadable; the spool keeps the file as it was sent;
- the header is parsed up to the Pixel Data element (PS3.5 7.1), values over 4 KiB left on
  disk, through a reader that allows at most :data:`MAX_HEADER_READS` reads (a real radiograph
  header takes a few thousand) and :data:`MAX_HEADER_BYTES` bytes.
"""

from __future__ import annotations

import contextlib
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from cxr_node.dicom import status

MAX_HEADER_READS = 100_000
"""Reads the header parser may make: about 35,000 elements, far past any radiograph's header
and a second or so of parsing on a slow core."""

MAX_HEADER_BYTES = 8 * 1024 * 1024
"""Bytes the header parser may read (values over 4 KiB are skipped, not read): what a header
can hold in memory, whatever its count of elements."""

DEFER_VALUES_OVER_BYTES = 4096
_CHUNK = 1 << 16
_MAX_OUTPUT_PER_CALL = 1 << 20
_PIXEL_DATA_TAGS = frozenset(
    {
        b"\xe0\x7f\x10\x00",  # (7FE0,0010) Pixel Data
        b"\xe0\x7f\x08\x00",  # (7FE0,0008) Float Pixel Data
        b"\xe0\x7f\x09\x00",  # (7FE0,0009) Double Float Pixel Data
    }
)


class HeaderRefused(Exception):
    """The header cannot be read within the limits: ``status`` is the DIMSE status to answer,
    ``reason`` says why in words safe for a log."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status_code
        self.reason = reason


@dataclass(frozen=True)
class Header:
    """The data set up to its pixels, and whether Pixel Data follows."""

    dataset: Dataset
    has_pixel_data: bool


@contextlib.contextmanager
def open_header(path: Path, max_inflated_bytes: int | None) -> Iterator[Header]:
    """The header of the Part 10 file at ``path``; values left on disk can be read while the
    context is open. Raises :class:`HeaderRefused` or pydicom's errors for a broken file."""
    meta = read_file_meta_info(path)
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    inflated: Path | None = None
    try:
        source = path
        if syntax == DeflatedExplicitVRLittleEndian:
            inflated = inflate(path, meta, max_inflated_bytes)
            source = inflated
        with source.open("rb") as raw:
            reader = BudgetedReader(raw, MAX_HEADER_READS, MAX_HEADER_BYTES)
            dataset = dcmread(
                reader,
                defer_size=DEFER_VALUES_OVER_BYTES,
                stop_before_pixels=True,
            )
            yield Header(dataset, raw.read(4) in _PIXEL_DATA_TAGS)
    finally:
        if inflated is not None:
            inflated.unlink(missing_ok=True)


def inflate(path: Path, meta: Dataset, max_inflated_bytes: int | None) -> Path:
    """Inflate the deflated data set of ``path`` (raw deflate, RFC 1951; PS3.5 A.5) into a new
    Part 10 file beside it, in Explicit VR Little Endian; its path (the caller removes it)."""
    start = data_set_offset(path)
    handle, name = tempfile.mkstemp(dir=path.parent, suffix=".inflated")
    target = Path(name)
    try:
        with open(handle, "wb") as out, path.open("rb") as source:
            plain_meta = Dataset()
            plain_meta.update(meta)
            plain_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(out, plain_meta, enforce_standard=False)  # type: ignore[arg-type]
            source.seek(start)
            _inflate_stream(source, out, max_inflated_bytes)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


def _inflate_stream(source: BinaryIO, out: BinaryIO, limit: int | None) -> None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            while chunk and not inflater.eof:
                piece = inflater.decompress(chunk, _MAX_OUTPUT_PER_CALL)
                total += len(piece)
                if limit is not None and total > limit:
                    raise HeaderRefused(
                        status.OUT_OF_RESOURCES,
                        f"deflated data set inflates past max_instance_bytes ({limit} bytes)",
                    )
                out.write(piece)
                chunk = inflater.unconsumed_tail
        out.write(inflater.flush())
    except zlib.error as exc:
        raise HeaderRefused(
            status.CANNOT_UNDERSTAND, "deflated data set cannot be inflated"
        ) from exc


def data_set_offset(path: Path) -> int:
    """Where the data set starts in a Part 10 file: after the preamble, the prefix and the File
    Meta Information, whose group length (0002,0000) says how long it is (PS3.10 7.1)."""
    with path.open("rb") as stream:
        stream.seek(128 + 4)
        element = stream.read(12)
    if len(element) != 12 or element[:4] != b"\x02\x00\x00\x00":
        raise HeaderRefused(status.CANNOT_UNDERSTAND, "File Meta Information Group Length missing")
    return 128 + 4 + 12 + int.from_bytes(element[8:12], "little")


class BudgetedReader:
    """A read-only file that raises :class:`HeaderRefused` after ``max_reads`` reads or
    ``max_bytes`` bytes read."""

    def __init__(self, raw: BinaryIO, max_reads: int, max_bytes: int) -> None:
        self._raw = raw
        self._reads_left = max_reads
        self._bytes_left = max_bytes

    def read(self, size: int = -1) -> bytes:
        self._reads_left -= 1
        if self._reads_left < 0:
            raise HeaderRefused(
                status.CANNOT_UNDERSTAND,
                f"header has too many elements (over {MAX_HEADER_READS} reads before its pixels)",
            )
        data = self._raw.read(size if 0 <= size <= self._bytes_left else self._bytes_left + 1)
        self._bytes_left -= len(data)
        if self._bytes_left < 0:
            raise HeaderRefused(
                status.CANNOT_UNDERSTAND,
                f"header over {MAX_HEADER_BYTES} bytes before its pixels",
            )
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        if name == "name":
            raise AttributeError(name)  # no name: pydicom reads deferred values through us
        return getattr(self._raw, name)
