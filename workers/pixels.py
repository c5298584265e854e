"""DICOM and image files to arrays: pure functions, ndarray in, ndarray out.

Order (PS3.3 C.11, the grayscale pipeline): decode, Modality LUT, VOI LUT or window,
then the presentation sense (MONOCHROME1 or Presentation LUT Shape INVERSE is shown inverted).
The result is a float32 image in [0, 1] where bright means dense, in source geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cxr_node.errors import RejectedInput


@dataclass(frozen=True)
class SquareBox:
    """Where the model's square input sits in the source image (pixel units, may overhang)."""

    x0: int
    y0: int
    side: int


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
    if pixels.ndim == 4 or (pixels.ndim == 3 and int(dataset.get("SamplesPerPixel", 1)) == 1):
        raise RejectedInput("MULTI_FRAME", "multi-frame images are not analysed")
    return np.asarray(pixels)


MIN_GREY_LEVELS = 32
"""Fewer distinct stored values than this is not a radiograph (a test pattern, a blank or
synthetic image): real radiographs in our corpus have at least 121, the SMPTE pattern 17."""


def check_plausible_radiograph(pixels: np.ndarray, min_grey_levels: int = MIN_GREY_LEVELS) -> None:
    """Pixel sanity before analysis: not constant, enough grey levels; RejectedInput if not."""
    sample = pixels if pixels.size <= 4_000_000 else pixels.reshape(-1)[:: pixels.size // 4_000_000]
    levels = len(np.unique(sample))
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


def displayed_image(dataset: Dataset, min_grey_levels: int = MIN_GREY_LEVELS) -> np.ndarray:
    """The image as a reader sees it: float32 [0, 1], bright = dense, source geometry."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        # PALETTE COLOR indices, for instance, are not intensities.
        raise RejectedInput("PHOTOMETRIC", f"unsupported photometric interpretation {photometric}")
    pixels = to_grayscale(decode(dataset), photometric)
    if pixels.ndim != 2:
        raise RejectedInput("PIXEL_SHAPE", "pixel data is not a single 2D image")
    check_plausible_radiograph(pixels, min_grey_levels)
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, dataset)
        has_voi = "VOILUTSequence" in dataset or "WindowCenter" in dataset
        values = apply_voi_lut(values, dataset, index=0) if has_voi else percentile_window(values)
    else:
        values = pixels
    image = normalise(values)
    if is_inverted(dataset):
        image = 1.0 - image
    return image


def is_inverted(dataset: Dataset) -> bool:
    """MONOCHROME1 (low values bright), or MONOCHROME2 with Presentation LUT Shape INVERSE.

    PS3.3 C.8.11.6.1.2: for MONOCHROME1 the DX IODs *require* INVERSE, which describes the same
    single inversion, so MONOCHROME1 + INVERSE is inverted once, not twice.
    """
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    shape = str(dataset.get("PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")


def square_box(height: int, width: int, mode: str) -> SquareBox:
    """The centred square the model reads: the inscribed one ("crop") or enclosing one ("pad")."""
    side = min(height, width) if mode == "crop" else max(height, width)
    return SquareBox(x0=(width - side) // 2, y0=(height - side) // 2, side=side)


def _overlap(box: SquareBox, height: int, width: int) -> tuple[tuple[slice, slice], ...]:
    """(source slices, square slices) of where the box and the image overlap."""
    sy0, sx0 = max(box.y0, 0), max(box.x0, 0)
    sy1, sx1 = min(box.y0 + box.side, height), min(box.x0 + box.side, width)
    source = (slice(sy0, sy1), slice(sx0, sx1))
    square = (slice(sy0 - box.y0, sy1 - box.y0), slice(sx0 - box.x0, sx1 - box.x0))
    return source, square


def extract_square(image: np.ndarray, box: SquareBox) -> np.ndarray:
    """Cut (or zero-pad to) the square box out of the image."""
    out = np.zeros((box.side, box.side), dtype=image.dtype)
    source, square = _overlap(box, *image.shape)
    out[square] = image[source]
    return out


def paste_square(square: np.ndarray, box: SquareBox, height: int, width: int) -> np.ndarray:
    """The inverse of :func:`extract_square`: a (side x side) map placed in source geometry."""
    out = np.zeros((height, width), dtype=square.dtype)
    source, inside = _overlap(box, height, width)
    out[source] = square[inside]
    return out


def equalise_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation of a [0, 1] image (optional, as a bundle declares)."""
    histogram, edges = np.histogram(image, bins=bins, range=(0.0, 1.0))
    cdf = histogram.cumsum().astype(np.float32)
    cdf /= cdf[-1]
    return np.interp(image, edges[:-1], cdf).astype(np.float32)


def scale_to_range(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Map [0, 1] onto the value range the network was trained on (e.g. [-1024, 1024])."""
    low, high = value_range
    return (image * (high - low) + low).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] image as 8-bit for display and Secondary Capture."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
