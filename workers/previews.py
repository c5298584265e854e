"""Pictures for the web app's study page: the radiograph as displayed (windowed, at most
``PREVIEW_SIDE`` pixels a side, 8-bit PNG) and, per explained finding, its Grad-CAM map with the
same aspect as a colour overlay with transparency (palette PNG with alpha, at most
``OVERLAY_SIDE`` pixels a side: a Grad-CAM map is smooth, and the page stretches it over the
picture). They are derived data, not DICOM: written next to the results
(``<study>/previews/<image>/``), removed with the study's files by spool retention, never
delivered.

They are written for every analysed image, so they are made fast: PNG at zlib level 1, the
colour ramp as a 256-entry palette, small overlays, one downscaled picture shared with the SC
(issue 16: at 1024 pixels, RGBA and zlib level 6 they took 0.6-0.8 s of a full-size radiograph's
0.9-1.0 s)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_node import pictures
from cxr_node.spool import Spool
from workers import geometry

if TYPE_CHECKING:
    from workers.analysis import AnalysedImage

log = logging.getLogger(__name__)

PREVIEW_SIDE = 1024
OVERLAY_SIDE = 256
OVERLAY_ALPHA = 0.6
PNG_LEVEL = 1
_RAMP = np.array(  # value 0 .. 1: dark blue, cyan, yellow, red (a perceptually ordered ramp)
    [[0.0, 0.05, 0.2, 0.6], [0.35, 0.0, 0.75, 0.9], [0.7, 1.0, 0.9, 0.1], [1.0, 0.85, 0.1, 0.05]]
)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] image as 8-bit for display and Secondary Capture."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def preview_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The preview's (rows, columns): the image's, scaled down to fit ``PREVIEW_SIDE``."""
    return geometry.fit_within(shape, PREVIEW_SIDE)


def overlay_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A heatmap overlay's (rows, columns): the image's, scaled down to fit ``OVERLAY_SIDE``."""
    return geometry.fit_within(shape, OVERLAY_SIDE)


def _overlay_table() -> np.ndarray:
    """RGBA (uint8) for each 8-bit map value: the colour ramp, transparent where it is low."""
    values = np.arange(256, dtype=np.float32) / 255.0
    rgb = np.stack([np.interp(values, _RAMP[:, 0], _RAMP[:, c]) for c in (1, 2, 3)], axis=-1)
    alpha = np.clip(values * OVERLAY_ALPHA / 0.8, 0.0, OVERLAY_ALPHA)
    return np.rint(np.concatenate([rgb, alpha[:, None]], axis=-1) * 255).astype(np.uint8)


_OVERLAY_TABLE = _overlay_table()


def picture_of(display: np.ndarray, source_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The displayed radiograph ([0, 1], source geometry) as the 8-bit picture that the web page
    and the SC are drawn from: scaled down to :func:`preview_shape` with an antialiased
    (triangle) filter, once per image (on a 2500x2048 image 10 ms, where Lanczos on the 8-bit
    full-size image took 35 ms, and the web picture and the SC each made their own). With
    ``source_shape``, the display is the source at a reduced resolution, and the picture has the
    source's preview shape."""
    shape = preview_shape(source_shape or display.shape)
    if shape != display.shape[:2]:
        tensor = torch.from_numpy(np.ascontiguousarray(display, dtype=np.float32))[None, None]
        small = F.interpolate(tensor, size=shape, mode="bilinear", antialias=True)
        display = small[0, 0].numpy()
    return to_uint8(display)


def image_png(picture: np.ndarray) -> bytes:
    """The radiograph's 8-bit picture (:func:`picture_of`) as a greyscale PNG."""
    return _png(Image.fromarray(picture, mode="L"))


def overlay_png(heatmap: np.ndarray, shape: tuple[int, int]) -> bytes:
    """A [0, 1] map in the image's geometry as a colour overlay of ``shape``: the colour ramp
    by value, transparent where the map is low. An 8-bit palette PNG whose palette holds the
    ramp's RGBA (a tRNS chunk, PNG 1.2 4.2.1.1): browsers draw it as RGBA, and it is written in
    an eighth of the time of an RGBA PNG."""
    picture = Image.fromarray(to_uint8(np.clip(heatmap, 0.0, 1.0)), mode="L")
    if picture.size != (shape[1], shape[0]):
        picture = picture.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    indexed = Image.frombytes("P", picture.size, picture.tobytes())
    indexed.putpalette(_OVERLAY_TABLE.tobytes(), rawmode="RGBA")
    return _png(indexed)


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def write_previews(spool: Spool, relative_path: str, analysed: AnalysedImage) -> None:
    """The pictures of one analysed image, beside its spooled file's study: ``image.png``,
    ``heatmap-<label>.png`` per explained finding, and ``geometry.json`` (the analysed image's
    rows and columns, the frame of the findings' regions). Written atomically; a picture is a
    convenience, so a failure to write one is logged, not raised."""
    source = spool.resolve(relative_path)
    write_pictures(spool, source.parent / "previews" / source.stem, analysed)


def write_pictures(spool: Spool, folder: Path, analysed: AnalysedImage) -> list[str]:
    """The pictures of an analysed image in ``folder`` (see :func:`write_previews`); the labels
    of the findings that have a heatmap (none when the pictures could not be written)."""
    try:
        shape = overlay_shape(analysed.source_shape)
        files = {pictures.IMAGE: image_png(analysed.picture)}
        for label, overlay in analysed.overlays.items():
            files[pictures.heatmap_name(label)] = overlay_png(overlay, shape)
        rows, columns = analysed.source_shape
        files[pictures.GEOMETRY] = json.dumps({"rows": rows, "columns": columns}).encode()
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("heatmap-*.png"):
            if stale.name not in files:
                stale.unlink(missing_ok=True)  # from an earlier analysis
        for name, data in files.items():
            spool.write_atomically(folder / name, [data])
    except OSError as exc:
        log.warning("pictures of an image not written (%s)", type(exc).__name__)
        return []
    return list(analysed.overlays)
