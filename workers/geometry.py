"""Where the network's square sits in an image, and pictures scaled to fit: pure functions on
shapes and arrays (no DICOM)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SquareBox:
    """Where the model's square input sits in the source image (pixel units, may overhang)."""

    x0: int
    y0: int
    side: int


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


def fit_within(shape: tuple[int, ...], side: int) -> tuple[int, int]:
    """(rows, columns) of ``shape`` scaled down (never up) to fit ``side`` pixels a side."""
    rows, columns = int(shape[0]), int(shape[1])
    scale = min(1.0, side / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def scaled_box(box: SquareBox, scale: float) -> SquareBox:
    """The model's square in an image scaled by ``scale`` (a picture of the source, scaled by
    its longer side as :func:`fit_within` does)."""
    if scale == 1.0:
        return box
    return SquareBox(round(box.x0 * scale), round(box.y0 * scale), max(1, round(box.side * scale)))
