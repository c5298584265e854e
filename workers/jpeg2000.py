"""JPEG 2000 radiographs decoded at a reduced resolution level (ISO/IEC 15444-1 B.5: each level
halves each side, and a decoder can stop before the finest ones).

The analysis needs at most about a thousand pixels a side (the network reads 224-512, the web
picture and the SC at most 1024), so a 2500x2048 JPEG 2000 radiograph is decoded one level down
(1250x1024) in about a third of the time of the full image. Pillow's JPEG 2000 plugin (OpenJPEG)
decodes the level (its documented ``reduce`` attribute); pydicom's decoders cannot.

Only the plain case is taken: JPEG 2000 (PS3.5 A.4.4), one frame, one unsigned grey component
whose precision is Bits Stored and whose size is Rows x Columns, with enough decomposition
levels. Anything else, or any failure, returns None and the caller decodes the full image the
usual way (which also gives the usual refusal for a broken codestream).
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.encaps import generate_frames

log = logging.getLogger(__name__)

JPEG2000_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 Image Compression
    }
)
SOC_SIZ = b"\xff\x4f\xff\x51"
COD = 0xFF52
SOT = 0xFF90
HEADER_SEARCH_BYTES = 65536
"""A JP2 wrapper's boxes come before the codestream; look this far for its start."""


@dataclass(frozen=True)
class Codestream:
    """What the main header says (ISO/IEC 15444-1 A.5.1 SIZ, A.6.1 COD)."""

    width: int
    height: int
    components: int
    precision: int
    signed: bool
    levels: int
    """Decomposition levels of the default coding style (resolutions - 1)."""
    offset: bool = False
    """Image or tile grid offsets other than 0 (XOsiz, YOsiz, XTOsiz, YTOsiz)."""
    subsampled: bool = False
    """The first component sampled at other than every pixel (XRsiz, YRsiz)."""


def read_codestream_header(frame: bytes) -> Codestream | None:
    """SIZ and COD of a J2K codestream (raw, or inside a JP2 file); None if not found."""
    start = frame.find(SOC_SIZ, 0, HEADER_SEARCH_BYTES)
    if start < 0:
        return None
    try:
        at = start + 4
        (length,) = struct.unpack_from(">H", frame, at)
        _, xsiz, ysiz, xosiz, yosiz, _, _, xtosiz, ytosiz, csiz = struct.unpack_from(
            ">HIIIIIIIIH", frame, at + 2
        )
        ssiz, xrsiz, yrsiz = struct.unpack_from(">BBB", frame, at + 38)
        at += length
        levels = None
        while at + 4 <= len(frame):
            marker, segment = struct.unpack_from(">HH", frame, at)
            if marker == COD:
                (levels,) = struct.unpack_from(">B", frame, at + 9)
                break
            if marker == SOT or marker >> 8 != 0xFF:
                break
            at += 2 + segment
    except struct.error:
        return None
    if levels is None:
        return None
    return Codestream(
        width=xsiz - xosiz,
        height=ysiz - yosiz,
        components=csiz,
        precision=(ssiz & 0x7F) + 1,
        signed=bool(ssiz & 0x80),
        levels=levels,
        offset=any((xosiz, yosiz, xtosiz, ytosiz)),
        subsampled=(xrsiz, yrsiz) != (1, 1),
    )


def level_shape(rows: int, columns: int, reduce: int) -> tuple[int, int]:
    """(rows, columns) of the image ``reduce`` levels down (ISO/IEC 15444-1 B.5: the ceiling)."""
    step = 2**reduce
    return -(-rows // step), -(-columns // step)


def _pillow_agrees(width: int, height: int, reduce: int) -> bool:
    """Pillow sizes a reduced image by rounding, OpenJPEG by the ceiling; where they differ,
    Pillow's decode fails, so such levels are not asked for."""
    step = 2**reduce
    rounded = ((height + step // 2) // step, (width + step // 2) // step)
    return rounded == level_shape(height, width, reduce)


def reduction_for(codestream: Codestream, min_side: int) -> int:
    """The most levels to drop while the longer side stays at least ``min_side`` pixels (and
    Pillow and OpenJPEG agree on the level's size)."""
    best = 0
    for reduce in range(1, codestream.levels + 1):
        if max(level_shape(codestream.height, codestream.width, reduce)) < min_side:
            break
        if _pillow_agrees(codestream.width, codestream.height, reduce):
            best = reduce
    return best


def decode_reduced(dataset: Dataset, min_side: int) -> np.ndarray | None:
    """The stored values at the coarsest resolution level whose longer side is at least
    ``min_side``, or None (not the plain case, no level to drop, or the decoder failed)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "")) if meta is not None else ""
    if syntax not in JPEG2000_SYNTAXES or "PixelData" not in dataset:
        return None
    try:
        if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
            return None
        if int(dataset.SamplesPerPixel) != 1 or int(dataset.PixelRepresentation) != 0:
            return None
        rows, columns, bits_stored = (
            int(dataset.Rows),
            int(dataset.Columns),
            int(dataset.BitsStored),
        )
        frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    except Exception:
        return None
    codestream = read_codestream_header(frame)
    if (
        codestream is None
        or codestream.components != 1
        or codestream.signed
        or codestream.precision != bits_stored
        or (codestream.width, codestream.height) != (columns, rows)
        or codestream.offset
        or codestream.subsampled
    ):
        return None
    reduce = reduction_for(codestream, min_side)
    if reduce == 0:
        return None
    try:
        with Image.open(io.BytesIO(frame)) as picture:
            picture.reduce = reduce  # type: ignore[assignment,method-assign]
            picture.load()
            stored = np.asarray(picture)
    except Exception as exc:  # the full decode decides, and refuses with its reason
        log.info("reduced JPEG 2000 decode failed (%s); decoding in full", type(exc).__name__)
        return None
    # Pillow scales a component of precision p up to its 8 or 16 bits; shift back exactly.
    container = 16 if stored.dtype == np.uint16 else 8
    if (
        stored.shape != level_shape(rows, columns, reduce)
        or stored.dtype not in (np.uint8, np.uint16)
        or codestream.precision > container
    ):
        return None
    return np.right_shift(stored, container - codestream.precision)
