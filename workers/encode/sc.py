"""Heatmap overlay of one chest radiograph as a Secondary Capture (PS3.3 A.8.1 SC Image IOD).

The picture is the windowed source image, a colour-mapped heatmap alpha-blended where
the map is hot, and a band below the image with a colour scale bar and a burned-in
legend (top findings, "AI-generated - not for diagnosis", "DEMO MODEL - NOT TRAINED").
The image is only ever downscaled (long side at most 1024 px) and never stretched.
Built with highdicom ``SCImage.from_ref_dataset``, in the source study, a new series.
"""

from __future__ import annotations

import functools
import threading

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from cxr_node.jobs import ImageAnalysis
from workers.geometry import fit_within

from .copies import clone
from .header import header_view, restore_verbatim
from .sr import AI_CONTRIBUTION, MANUFACTURER, ai_equipment, series_description

MAX_SIDE = 1024
"""Long side of the whole SC, band included, at most this many pixels."""

HOT_FLOOR = 0.35
"""Heatmap values below this are not drawn at all."""

MAX_ALPHA = 0.6
"""Opacity of the overlay where the heatmap is 1."""

WHITE = (255, 255, 255)
WARNING = (255, 210, 0)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

# Anchors of the classic "jet" colour map: position, (R, G, B).
_JET = (
    (0.0, (0, 0, 128)),
    (0.125, (0, 0, 255)),
    (0.375, (0, 255, 255)),
    (0.625, (255, 255, 0)),
    (0.875, (255, 0, 0)),
    (1.0, (128, 0, 0)),
)


_JET_POSITIONS = [p for p, _ in _JET]
_JET_CHANNELS = [[rgb[c] for _, rgb in _JET] for c in range(3)]


def _jet(values: np.ndarray, channel: int) -> np.ndarray:
    """One jet channel, rounded to whole levels (float64)."""
    return np.interp(values, _JET_POSITIONS, _JET_CHANNELS[channel]).round()


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to uint8 RGB with the jet colour map (shape + (3,))."""
    return np.stack([_jet(values, c) for c in range(3)], axis=-1).astype(np.uint8)


def blend(gray: np.ndarray, heatmap: np.ndarray | None) -> np.ndarray:
    """Grey image to RGB, with the heatmap blended in where it is above HOT_FLOOR.

    Per pixel and channel: grey * (1 - alpha) + jet(heat) * alpha in float32, rounded, with
    alpha rising from 0 at HOT_FLOOR to MAX_ALPHA at 1. Where alpha is 0 that is the grey
    value itself, so only the other pixels are computed (the same arithmetic, fewer pixels).
    """
    if gray.dtype != np.uint8:
        gray = gray.astype(np.float32).astype(np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    if heatmap is None:
        return rgb
    hot = ~(heatmap <= HOT_FLOOR)  # NaN included: computed as before
    heat = heatmap[hot]
    if heat.size == 0:
        return rgb
    alpha = MAX_ALPHA * np.clip((heat - HOT_FLOOR) / (1.0 - HOT_FLOOR), 0.0, 1.0)
    base = gray[hot].astype(np.float32) * (1.0 - alpha)
    for channel in range(3):
        mixed = base + _jet(heat, channel).astype(np.float32) * alpha
        rgb[..., channel][hot] = np.clip(mixed.round(), 0, 255).astype(np.uint8)
    return rgb


def _check_inputs(
    source: pydicom.Dataset, display: np.ndarray, heatmap: np.ndarray | None
) -> np.ndarray | None:
    """The display is an 8-bit picture of the source (its geometry, or scaled down with its
    aspect); the heatmap shares the display's geometry. Returns a clean heatmap."""
    source_shape = (int(source.Rows), int(source.Columns))
    if display.ndim != 2 or display.dtype != np.uint8:
        raise ValueError("display must be a 2D uint8 picture")
    expected = fit_within(source_shape, max(display.shape))
    if display.shape != expected:
        raise ValueError(f"display must have the source's shape {source_shape} or its aspect")
    if heatmap is None:
        return None
    if heatmap.shape != display.shape:
        raise ValueError(f"heatmap must have the display's shape {display.shape}")
    return np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)


_FONTS = threading.local()


def _font(size: int) -> Font:
    """Pillow's default font at ``size`` (FreeType), else the fixed bitmap default.

    Loaded once per size and thread (a FreeType face is not for concurrent use).
    """
    fonts: dict[int, Font] = _FONTS.__dict__.setdefault("by_size", {})
    font = fonts.get(size)
    if font is None:
        try:
            font = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):
            font = ImageFont.load_default()
        fonts[size] = font
    return font


def legend_lines(analysis: ImageAnalysis) -> list[str]:
    """Burned-in legend: top finding(s) with probability, the AI notice, DEMO if so."""
    positives = analysis.positive_findings[:2]
    if positives:
        first = ", ".join(f"{f.label} {f.probability:.0%}" for f in positives)
    elif analysis.findings:
        top = max(analysis.findings, key=lambda f: f.probability)
        first = f"No finding above threshold (top: {top.label} {top.probability:.0%})"
    else:
        first = "No findings reported"
    lines = [first, "AI-generated - not for diagnosis"]
    if analysis.model.demo:
        lines.append("DEMO MODEL - NOT TRAINED")
    return lines


def _font_size(width: int) -> int:
    return int(min(max(round(width / 40), 9), 28))


def _fitting_font(text: str, width: int) -> Font:
    """Largest default font, from the band's size down to 7 px, at which text fits."""
    return _font(_fitting_size(text, width))


@functools.lru_cache(maxsize=256)
def _fitting_size(text: str, width: int) -> int:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = _font_size(width)
    while size > 7 and draw.textlength(text, font=_font(size)) > width - size:
        size -= 1
    return size


def _band_height(n_lines: int, size: int, with_bar: bool) -> int:
    line = round(size * 1.4)
    rows = n_lines + (1 if with_bar else 0)
    return rows * line + size


def layout(rows: int, columns: int, n_lines: int, with_bar: bool) -> tuple[int, int, int]:
    """(width, height, band) with width and height + band at most MAX_SIDE; aspect kept."""
    scale = min(1.0, MAX_SIDE / max(rows, columns))
    for _ in range(3):
        width = max(1, round(columns * scale))
        height = max(1, round(rows * scale))
        band = _band_height(n_lines, _font_size(width), with_bar)
        if height + band <= MAX_SIDE:
            return width, height, band
        scale = min(scale, (MAX_SIDE - band) / rows)
    return width, height, band


def _resize(
    display: np.ndarray, heatmap: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale (Lanczos for the image, bilinear for the map); no-op at full size."""
    if (display.shape[1], display.shape[0]) == size:
        return display, heatmap
    gray = np.asarray(Image.fromarray(display).resize(size, Image.Resampling.LANCZOS))
    if heatmap is None:
        return gray, None
    heat = np.asarray(Image.fromarray(heatmap).resize(size, Image.Resampling.BILINEAR))
    return gray, np.clip(heat, 0.0, 1.0)


def _draw_bar(
    draw: ImageDraw.ImageDraw, canvas: Image.Image, top: int, font: Font, size: int
) -> None:
    """Horizontal colour scale bar "low ... high" over the drawn range [HOT_FLOOR, 1]."""
    pad = size // 2
    low_w = round(draw.textlength("low", font=font))
    high_w = round(draw.textlength("high", font=font))
    left = pad + low_w + pad
    right = canvas.width - pad - high_w - pad
    if right - left < 8:
        return
    bar = colormap(np.linspace(HOT_FLOOR, 1.0, right - left))  # the drawn range
    bar_rows = np.repeat(bar[None, :, :], max(2, size * 2 // 3), axis=0)
    canvas.paste(Image.fromarray(bar_rows), (left, top + (size - bar_rows.shape[0]) // 2))
    draw.text((pad, top), "low", font=font, fill=WHITE)
    draw.text((right + pad, top), "high", font=font, fill=WHITE)


def _draw_legend(canvas: Image.Image, top: int, lines: list[str], with_bar: bool) -> None:
    """Band content: the colour bar (when there is a heatmap), then the legend lines.

    Each line keeps the band's font size unless it is too long for the width.
    """
    draw = ImageDraw.Draw(canvas)
    size = _font_size(canvas.width)
    line = round(size * 1.4)
    y = top + size // 2
    if with_bar:
        _draw_bar(draw, canvas, y, _font(size), size)
        y += line
    for text in lines:
        fill = WARNING if text.startswith(("DEMO", "AI-generated")) else WHITE
        draw.text((size // 2, y), text, font=_fitting_font(text, canvas.width), fill=fill)
        y += line


def render(display: np.ndarray, heatmap: np.ndarray | None, analysis: ImageAnalysis) -> np.ndarray:
    """Compose the RGB picture: overlay on top, legend band below (uint8 H x W x 3)."""
    lines = legend_lines(analysis)
    with_bar = heatmap is not None
    width, height, band = layout(display.shape[0], display.shape[1], len(lines), with_bar)
    gray, heat = _resize(display, heatmap, (width, height))
    canvas = Image.new("RGB", (width, height + band))
    canvas.paste(Image.fromarray(blend(gray, heat)), (0, 0))
    _draw_legend(canvas, height, lines, with_bar)
    return np.asarray(canvas)


def _orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    """Source PatientOrientation when highdicom accepts it (single biped letters)."""
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    allowed = {v.value for v in hd.PatientOrientationValuesBiped}
    row, column = str(value[0]), str(value[1])
    return (row, column) if row in allowed and column in allowed else None


def _source_reference(source: pydicom.Dataset) -> DicomSequence:
    """SourceImageSequence item with purpose of reference (PS3.3 C.7.6.1, CID 7202)."""
    purpose = pydicom.Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue = code.value
    purpose.CodingSchemeDesignator = code.scheme_designator
    purpose.CodeMeaning = code.meaning
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return DicomSequence([item])


def _finish(
    sc: pydicom.Dataset, source: pydicom.Dataset, orientation: tuple[str, str] | None
) -> None:
    """What highdicom leaves out: reference, body part, orientation, conversion, notice."""
    sc.SourceImageSequence = _source_reference(source)
    body_part = source.get("BodyPartExamined")
    if body_part:
        sc.BodyPartExamined = body_part
    laterality = source.get("Laterality")
    if laterality is not None:
        sc.Laterality = laterality
    elif not body_part:
        sc.Laterality = ""  # Type 2C: whether the part is paired is unknown
    if orientation is None:
        value = source.get("PatientOrientation")
        letters = [str(v) for v in value] if value and not isinstance(value, str) else []
        valid = len(letters) == 2 and all(v and set(v) <= set("LRAPHF") for v in letters)
        sc.PatientOrientation = letters if valid else ""
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "AI heatmap overlay with burned-in legend; not for diagnostic use"


def build_heatmap_sc(
    source: pydicom.Dataset,
    display: np.ndarray,
    heatmap: np.ndarray | None,
    analysis: ImageAnalysis,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    header: pydicom.Dataset | None = None,
) -> pydicom.Dataset:
    """RGB Secondary Capture (PS3.3 A.8.1) of the heatmap overlay, in the source study.

    ``header``: ``header_view(source)`` when the caller has one to give away (the SC keeps
    its elements).
    """
    header = header if header is not None else header_view(source)
    if analysis.sop_instance_uid != header.SOPInstanceUID:
        raise ValueError("analysis does not belong to the source image")
    heat = _check_inputs(source, display, heatmap)
    pixels = render(display, heat, analysis)
    valid = clone(header)  # only values valid for their VR reach the SC (header is given away)
    orientation = _orientation(valid)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # Placeholder only when the source has none highdicom accepts; _finish then
        # writes the source's own value (or empty, Type 2C) instead.
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description(demo=analysis.model.demo, kind="heatmap"),
        manufacturer_model_name=analysis.model.name,
        software_versions=analysis.model.version,
        contributing_equipment=[ai_equipment(analysis.model, AI_CONTRIBUTION)],
    )
    _finish(sc, valid, orientation)
    restore_verbatim(sc, source)
    return sc
