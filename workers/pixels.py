"""DICOM and image files to arrays: pure functions, ndarray in, ndarray out.

Order (PS3.3 C.11, the grayscale pipeline): decode, Modality LUT, VOI LUT or window,
then the presentation sense (MONOCHROME1 or Presentation LUT Shape INVERSE is shown inverted).
The result is a float32 image in [0, 1] where bright means dense, in source geometry.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset

from cxr_node.errors import RejectedInput
from workers import jpeg2000

BAD_PIXEL_MODULE = "BAD_PIXEL_MODULE"
"""Reason code: an Image Pixel / Modality LUT attribute the pipeline needs is missing, not a
number where one is expected, multi-valued, or out of its range (PS3.3 C.7.6.3, C.11.1)."""


@dataclass(frozen=True)
class Lut:
    """A validated LUT (PS3.3 C.11.1.1.1): input ``first`` maps to ``table[0]``; inputs below and
    above the table map to its first and last entries."""

    first: int
    table: np.ndarray

    def apply(self, values: np.ndarray) -> np.ndarray:
        index = np.clip(np.rint(values) - self.first, 0, len(self.table) - 1).astype(np.int64)
        return self.table[index]


@dataclass(frozen=True)
class Window:
    """A validated window: finite centre, width >= 1 (LINEAR) or > 0 (LINEAR_EXACT, SIGMOID)."""

    center: float
    width: float

    def apply(self, values: np.ndarray, function: str) -> np.ndarray:
        """The VOI function of PS3.3 C.11.2.1.2 with output range [0, 1]."""
        x = values.astype(np.float64, copy=False)
        c, w = self.center, self.width
        if function == "SIGMOID":
            return np.asarray(1.0 / (1.0 + np.exp(-4.0 * (x - c) / w)))
        if function == "LINEAR_EXACT":
            return np.asarray(np.clip((x - c) / w + 0.5, 0.0, 1.0))
        if w == 1:  # the linear function's limit: a step at c - 0.5
            return np.asarray((x > c - 0.5).astype(np.float64))
        return np.asarray(np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0))


@dataclass(frozen=True)
class PixelHeader:
    """The Image Pixel, Modality LUT and VOI LUT attributes the pipeline uses, read once and
    validated (:func:`read_pixel_header`). Required attributes that are invalid refuse the image
    (``BAD_PIXEL_MODULE``); optional ones that are invalid (a window of width 0, a LUT whose
    descriptor does not match its data, 32-bit LUT entries) are left out, so the pipeline falls
    back to the next VOI, then to the percentile window."""

    photometric: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int
    rescale_slope: float
    rescale_intercept: float
    modality_lut: Lut | None
    voi_luts: tuple[Lut, ...]
    windows: tuple[Window, ...]
    voi_function: str
    presentation_lut_shape: str


class _Invalid(Exception):
    """An attribute value that is not valid for what the pipeline needs."""


def _values(dataset: Dataset, keyword: str) -> list[Any] | None:
    """The element's values as a list (None when absent or empty); _Invalid if unreadable."""
    if keyword not in dataset:
        return None
    try:
        value = dataset[keyword].value
    except Exception:  # pydicom raises for values it cannot convert (text in DS, bad lengths)
        raise _Invalid(keyword) from None
    if value is None or value == "" or (isinstance(value, bytes) and not value):
        return None
    if isinstance(value, (bytes, bytearray)):
        raise _Invalid(keyword)  # numbers left undecoded (UN, wrong length)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


def _number(value: Any, keyword: str, integer: bool = False) -> float:
    """One value as a finite number; text that is a number is accepted, anything else not."""
    if isinstance(value, bool):
        raise _Invalid(keyword)
    try:
        number = float(str(value).strip()) if isinstance(value, (str, bytes)) else float(value)
    except (TypeError, ValueError):
        raise _Invalid(keyword) from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise _Invalid(keyword)
    return number


def _single_int(
    dataset: Dataset, keyword: str, allowed: range | frozenset[int], default: int | None = None
) -> int:
    values = _values(dataset, keyword)
    if values is None:
        if default is None:
            raise _Invalid(keyword)
        return default
    if len(values) != 1:
        raise _Invalid(keyword)
    number = int(_number(values[0], keyword, integer=True))
    if number not in allowed:
        raise _Invalid(keyword)
    return number


def _single_float(dataset: Dataset, keyword: str, default: float) -> float:
    values = _values(dataset, keyword)
    if values is None:
        return default
    if len(values) != 1:
        raise _Invalid(keyword)
    return _number(values[0], keyword)


LUT_DEPTHS = frozenset({8, *range(10, 17)})
"""Bits per LUT entry allowed (PS3.3 C.11.1.1.1, C.11.2.1.1): 8 or 10-16; never 32."""


def _lut(item: Dataset, little_endian: bool) -> Lut | None:
    """A LUT item validated, or None when its descriptor and data do not agree."""
    try:
        descriptor = _values(item, "LUTDescriptor")
        if descriptor is None or len(descriptor) != 3:
            return None
        entries, first, depth = (int(_number(v, "LUTDescriptor", integer=True)) for v in descriptor)
        entries = entries or 65536
        if depth not in LUT_DEPTHS or not 0 < entries <= 65536:
            return None
        if "LUTData" not in item:
            return None
        data = item["LUTData"].value
        if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words whatever the depth
            if len(data) != 2 * entries:
                return None
            table = np.array(struct.unpack(f"{'<' if little_endian else '>'}{entries}H", data))
        else:
            listed = data if isinstance(data, (list, tuple)) or hasattr(data, "__len__") else [data]
            if len(listed) != entries:
                return None
            table = np.array([int(_number(v, "LUTData", integer=True)) for v in listed])
    except (_Invalid, TypeError, ValueError, struct.error, OverflowError):
        return None
    except Exception:  # pydicom raising while converting a value: as invalid
        return None
    if table.min() < 0 or table.max() >= 2**depth:
        return None
    return Lut(first=first, table=table.astype(np.float64))


def _luts(dataset: Dataset, keyword: str, little_endian: bool) -> list[Lut]:
    try:
        items = list(dataset.get(keyword) or [])
    except Exception:
        return []
    luts = [_lut(item, little_endian) for item in items if isinstance(item, Dataset)]
    return [lut for lut in luts if lut is not None]


def _windows(dataset: Dataset, function: str) -> list[Window]:
    """The windows whose centre and width are both valid numbers, in their order."""
    try:
        centers = _values(dataset, "WindowCenter") or []
        widths = _values(dataset, "WindowWidth") or []
    except _Invalid:
        return []
    windows = []
    for center, width in zip(centers, widths, strict=False):
        try:
            window = Window(_number(center, "WindowCenter"), _number(width, "WindowWidth"))
        except _Invalid:
            continue
        if window.width >= 1 or (function != "LINEAR" and window.width > 0):
            windows.append(window)
    return windows


def _text(dataset: Dataset, keyword: str, default: str) -> str:
    try:
        value = dataset.get(keyword, default)
    except Exception:
        return default
    if not isinstance(value, str):
        return default if value is None or value == "" else "?"
    return value.strip().upper() or default


def _little_endian(dataset: Dataset) -> bool:
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return syntax is None or bool(syntax.is_little_endian)
    except Exception:
        return True


def read_pixel_header(dataset: Dataset) -> PixelHeader:
    """The pixel attributes, validated once: RejectedInput(BAD_PIXEL_MODULE) names the first
    required attribute that is missing or invalid (no header value is quoted)."""
    try:
        bits_allocated = _single_int(dataset, "BitsAllocated", frozenset({8, 16, 32}))
        bits_stored = _single_int(dataset, "BitsStored", range(1, bits_allocated + 1))
        high_bit = _single_int(
            dataset, "HighBit", range(bits_stored - 1, bits_allocated), default=bits_stored - 1
        )
        header = PixelHeader(
            photometric=_text(dataset, "PhotometricInterpretation", "MONOCHROME2"),
            rows=_single_int(dataset, "Rows", range(1, 65536)),
            columns=_single_int(dataset, "Columns", range(1, 65536)),
            samples_per_pixel=_single_int(dataset, "SamplesPerPixel", frozenset({1, 3}), default=1),
            bits_allocated=bits_allocated,
            bits_stored=bits_stored,
            high_bit=high_bit,
            pixel_representation=_single_int(
                dataset, "PixelRepresentation", frozenset({0, 1}), default=0
            ),
            rescale_slope=_single_float(dataset, "RescaleSlope", 1.0),
            rescale_intercept=_single_float(dataset, "RescaleIntercept", 0.0),
            modality_lut=next(
                iter(_luts(dataset, "ModalityLUTSequence", _little_endian(dataset))), None
            ),
            voi_luts=tuple(_luts(dataset, "VOILUTSequence", _little_endian(dataset))),
            windows=(),
            voi_function=_text(dataset, "VOILUTFunction", "LINEAR"),
            presentation_lut_shape=_text(dataset, "PresentationLUTShape", "IDENTITY"),
        )
    except _Invalid as exc:
        raise RejectedInput(
            BAD_PIXEL_MODULE, f"{exc.args[0]} is missing or invalid for its use (PS3.3 C.7.6.3)"
        ) from None
    if header.rescale_slope == 0:
        raise RejectedInput(BAD_PIXEL_MODULE, "RescaleSlope is 0: every pixel would be equal")
    function = header.voi_function
    if function not in {"LINEAR", "LINEAR_EXACT", "SIGMOID"}:
        function = "LINEAR"  # an unknown VOI LUT Function: the default (PS3.3 C.11.2.1.3)
    return PixelHeader(
        **{
            **header.__dict__,
            "voi_function": function,
            "windows": tuple(_windows(dataset, function)),
        }
    )


def decode(dataset: Dataset) -> np.ndarray:
    """Decode the pixel data, or raise RejectedInput with the reason (PS3.5 8, 10)."""
    if "PixelData" not in dataset:
        raise RejectedInput("NO_PIXEL_DATA", "the instance has no pixel data")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:
        raise RejectedInput(
            "UNDECODABLE", f"pixel data cannot be decoded ({type(exc).__name__})"
        ) from None
    samples = read_pixel_header(dataset).samples_per_pixel
    if pixels.ndim == 4 or (pixels.ndim == 3 and samples == 1):
        raise RejectedInput("MULTI_FRAME", "multi-frame images are not analysed")
    return np.asarray(pixels)


MIN_GREY_LEVELS = 32
"""Fewer distinct stored values than this is not a radiograph (a test pattern, a blank or
synthetic image): real radiographs in our corpus have at least 121, the SMPTE pattern 17."""


def distinct_levels(values: np.ndarray) -> int:
    """How many distinct values: counted in a histogram for integers (linear time; a sort, as
    ``np.unique`` does, took 40 ms of a 2500x2048 image's 60 ms of display), else by sorting."""
    if values.dtype.kind in "ui" and values.size:
        low, high = int(values.min()), int(values.max())
        if high - low < 1 << 24:
            shifted = np.subtract(values.ravel(), low, dtype=np.int64) if low else values.ravel()
            return int(np.count_nonzero(np.bincount(shifted)))
    return len(np.unique(values))


def check_plausible_radiograph(pixels: np.ndarray, min_grey_levels: int = MIN_GREY_LEVELS) -> None:
    """Pixel sanity before analysis: not constant, enough grey levels; RejectedInput if not."""
    sample = pixels if pixels.size <= 4_000_000 else pixels.reshape(-1)[:: pixels.size // 4_000_000]
    _check_levels(distinct_levels(sample), min_grey_levels)


def _check_levels(levels: int, min_grey_levels: int) -> None:
    if levels <= 1:
        raise RejectedInput("CONSTANT_IMAGE", "the image has no contrast (constant pixel values)")
    if levels < min_grey_levels:
        raise RejectedInput(
            "TOO_FEW_GREY_LEVELS",
            f"{levels} distinct pixel values: a test pattern or synthetic image, not a radiograph",
        )


def to_grayscale(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """RGB (already converted from YBR by the decoder) to luminance (ITU-R BT.601)."""
    if pixels.ndim == 3:
        if photometric not in {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"}:
            raise RejectedInput(
                "PHOTOMETRIC", f"unsupported photometric interpretation {photometric}"
            )
        rgb = pixels[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return pixels


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the actual range; a constant image cannot be analysed."""
    values = values.astype(np.float32, copy=False)
    low, high = float(values.min()), float(values.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low <= 0:
        raise RejectedInput("CONSTANT_IMAGE", "the image has no contrast (constant pixel values)")
    return (values - low) / (high - low)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Without a VOI in the header: window to the central percentiles of the values."""
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return values
    return np.clip(values, lo, hi)


SUPPORTED_PHOTOMETRIC = frozenset(
    {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"}
)


def modality_values(pixels: np.ndarray, header: PixelHeader) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): the LUT sequence when valid, else the rescale."""
    if header.modality_lut is not None:
        return header.modality_lut.apply(pixels)
    values = pixels.astype(np.float64)
    if header.rescale_slope != 1.0 or header.rescale_intercept != 0.0:
        values = values * header.rescale_slope + header.rescale_intercept
    return values


def voi_values(values: np.ndarray, header: PixelHeader) -> np.ndarray:
    """VOI (PS3.3 C.11.2): the first valid VOI LUT, else the first valid window, else the
    0.5-99.5 percentile window. Invalid ones were left out by :func:`read_pixel_header`."""
    if header.voi_luts:
        return header.voi_luts[0].apply(values)
    if header.windows:
        return header.windows[0].apply(values, header.voi_function)
    return percentile_window(values)


def displayed_image(
    dataset: Dataset, min_grey_levels: int = MIN_GREY_LEVELS, min_side: int | None = None
) -> np.ndarray:
    """The image as a reader sees it: float32 [0, 1], bright = dense, source geometry.

    With ``min_side``, a JPEG 2000 image may come at a reduced resolution level whose longer
    side is at least that (:mod:`workers.jpeg2000`): the same field of view, fewer pixels."""
    header = read_pixel_header(dataset)
    photometric = header.photometric
    if photometric not in SUPPORTED_PHOTOMETRIC:
        # PALETTE COLOR indices, for instance, are not intensities.
        raise RejectedInput("PHOTOMETRIC", "unsupported photometric interpretation")
    reduced = None
    if min_side is not None and photometric.startswith("MONOCHROME"):
        reduced = jpeg2000.decode_reduced(dataset, min_side)
    pixels = reduced if reduced is not None else to_grayscale(decode(dataset), photometric)
    if pixels.ndim != 2:
        raise RejectedInput("PIXEL_SHAPE", "pixel data is not a single 2D image")
    if photometric.startswith("MONOCHROME") and pixels.dtype.kind in "ui" and pixels.size:
        return display_by_table(pixels, header, min_grey_levels)
    return display_by_arrays(pixels, header, min_grey_levels)


MAX_TABLE_ENTRIES = 1 << 20
"""Integer images whose stored values span at most this many levels are displayed through a
table over that span; wider ones (and floats, and colour) value by value."""


def display_by_arrays(
    pixels: np.ndarray, header: PixelHeader, min_grey_levels: int = MIN_GREY_LEVELS
) -> np.ndarray:
    """The grayscale pipeline computed on the whole image (any pixel type)."""
    check_plausible_radiograph(pixels, min_grey_levels)
    if header.photometric.startswith("MONOCHROME"):
        values = voi_values(modality_values(pixels, header), header)
    else:
        values = pixels
    image = normalise(values)
    if _inverted(header):
        image = 1.0 - image
    return image


def display_by_table(
    pixels: np.ndarray, header: PixelHeader, min_grey_levels: int = MIN_GREY_LEVELS
) -> np.ndarray:
    """The same pipeline for an integer MONOCHROME image, computed once per stored value: the
    Modality LUT, the VOI, the range and the sense go into a table over the image's span of
    values, and the image is one lookup in it (on a 2500x2048 16-bit image 18 ms where the
    whole-image computation took 44). The percentile window and the range count each value as
    often as it occurs, so the result equals :func:`display_by_arrays` value for value; the
    grey-level check counts all pixels. The table never has more than ``MAX_TABLE_ENTRIES``
    entries: values are indexed from the image's lowest unless they already start near 0; an
    image whose values span more is computed as a whole (:func:`display_by_arrays`)."""
    low, high = int(pixels.min()), int(pixels.max())
    if high - low >= MAX_TABLE_ENTRIES:
        return display_by_arrays(pixels, header, min_grey_levels)
    if low >= 0 and high < MAX_TABLE_ENTRIES:
        index, first = pixels, 0  # no shifted copy: table[v] is stored value v
    elif low >= 0:  # in the pixels' own type: every value is at least ``low``
        index, first = np.subtract(pixels, pixels.dtype.type(low)), low
    else:  # signed, at most 32 bits: low fits int32, and so does each value's offset
        index, first = np.subtract(pixels, low, dtype=np.int32), low
    counts = np.bincount(index.ravel())
    present = counts > 0
    _check_levels(int(np.count_nonzero(present)), min_grey_levels)
    stored = np.arange(first, first + len(counts), dtype=np.int64)
    values = modality_values(stored, header)
    if header.voi_luts:
        values = header.voi_luts[0].apply(values)
    elif header.windows:
        values = header.windows[0].apply(values, header.voi_function)
    else:
        lo, hi = weighted_percentiles(values, counts, (0.5, 99.5))
        if hi > lo:
            values = np.clip(values, np.float64(lo), np.float64(hi))
    table = values.astype(np.float32)
    shown = table[present]
    low_value, high_value = float(shown.min()), float(shown.max())
    if not np.isfinite(low_value) or not np.isfinite(high_value) or high_value - low_value <= 0:
        raise RejectedInput("CONSTANT_IMAGE", "the image has no contrast (constant pixel values)")
    table = (table - low_value) / (high_value - low_value)
    if _inverted(header):
        table = 1.0 - table
    return table[index]


def weighted_percentiles(
    values: np.ndarray, counts: np.ndarray, percents: tuple[float, ...]
) -> list[float]:
    """``np.percentile`` (linear) of an array holding ``values[i]`` ``counts[i]`` times, with
    numpy's own interpolation (``b - (b - a)(1 - t)`` from ``t`` = 0.5 on)."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ends = np.cumsum(counts[order])  # ends[i]: how many are <= sorted_values[i]
    total = int(ends[-1])
    result = []
    for percent in percents:
        position = percent / 100.0 * (total - 1)
        below = math.floor(position)
        above = min(below + 1, total - 1)
        first = float(sorted_values[np.searchsorted(ends, below, side="right")])
        second = float(sorted_values[np.searchsorted(ends, above, side="right")])
        fraction = position - below
        difference = second - first
        if fraction >= 0.5:
            result.append(second - difference * (1 - fraction))
        else:
            result.append(first + difference * fraction)
    return result


def _inverted(header: PixelHeader) -> bool:
    return header.photometric == "MONOCHROME1" or (
        header.photometric == "MONOCHROME2" and header.presentation_lut_shape == "INVERSE"
    )


def is_inverted(dataset: Dataset) -> bool:
    """MONOCHROME1 (low values bright), or MONOCHROME2 with Presentation LUT Shape INVERSE.

    PS3.3 C.8.11.6.1.2: for MONOCHROME1 the DX IODs *require* INVERSE, which describes the same
    single inversion, so MONOCHROME1 + INVERSE is inverted once, not twice.
    """
    photometric = _text(dataset, "PhotometricInterpretation", "")
    shape = _text(dataset, "PresentationLUTShape", "")
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
