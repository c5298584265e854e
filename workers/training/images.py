"""Pixels for training and evaluation, read through the serving path.

A file is read as ``cxr-node analyze`` reads it (DICOM as it is, PNG/JPEG wrapped as Secondary
Capture), shown as the node shows it (:func:`workers.pixels.displayed_image`: modality and VOI
LUTs, MONOCHROME1) and cut and resized as the bundle declares (:func:`workers.preprocess.
model_square`). Squares are kept as 16-bit integers in memory when they fit, else read again
each time they are needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cxr_node.errors import RejectedInput
from workers import pixels, preprocess
from workers.bundles import Preprocessing
from workers.offline import read_source
from workers.training.datasets import Sample, Skipped

log = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 4 << 30
"""Squares beyond this many bytes in all are not kept in memory but read again when needed."""

_SCALE = 65535.0


def load_square(path: Path, prep: Preprocessing, min_grey_levels: int = 32) -> np.ndarray:
    """The [0, 1] float32 square the network would read for this file when served."""
    source = read_source(path)
    image = pixels.displayed_image(source, min_grey_levels)
    square, _box = preprocess.model_square(image, prep)
    return square


@dataclass
class LoadedImages:
    """The samples whose pixels could be read, their squares (or None: read on demand), and
    the samples that could not be read, with the reason."""

    samples: list[Sample]
    squares: np.ndarray | None
    skipped: list[Skipped]
    prep: Preprocessing

    def square(self, index: int) -> np.ndarray:
        """Sample ``index``'s [0, 1] float32 square."""
        if self.squares is not None:
            return self.squares[index].astype(np.float32) / _SCALE
        return load_square(self.samples[index].path, self.prep)

    def batches(self, size: int, progress: bool = False) -> Iterator[torch.Tensor]:
        """Every square in order, ``size`` at a time, as (B, 1, S, S) tensors."""
        starts = range(0, len(self.samples), size)
        for start in tqdm(starts, desc="predicting", disable=not progress, leave=False):
            stop = min(start + size, len(self.samples))
            yield torch.stack([torch.from_numpy(self.square(i))[None] for i in range(start, stop)])


def _try_load(sample: Sample, prep: Preprocessing) -> np.ndarray | Skipped:
    try:
        return load_square(sample.path, prep)
    except RejectedInput as exc:
        return Skipped(sample.key, sample.path, sample.row, exc.reason_code, exc.reason)
    except Exception as exc:  # an unreadable file costs only itself
        reason = f"pixels could not be read ({type(exc).__name__})"
        return Skipped(sample.key, sample.path, sample.row, "UNREADABLE", reason)


def load_images(
    samples: Sequence[Sample],
    prep: Preprocessing,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    progress: bool = True,
    description: str = "reading images",
) -> LoadedImages:
    """Read every sample's pixels once (in parallel threads); keep the squares when they fit in
    ``cache_bytes``. Files that cannot be read are skipped with the node's reason code."""
    keep = len(samples) * prep.size * prep.size * 2 <= cache_bytes
    threads = max(1, min(8, os.cpu_count() or 1))
    kept: list[Sample] = []
    squares: list[np.ndarray] = []
    skipped: list[Skipped] = []
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda s: _try_load(s, prep), samples)
        bar = tqdm(results, total=len(samples), desc=description, disable=not progress)
        for sample, result in zip(samples, bar, strict=True):
            if isinstance(result, Skipped):
                log.warning("row %d skipped: %s", sample.row, result.reason)
                skipped.append(result)
                continue
            kept.append(sample)
            if keep:
                squares.append(np.rint(np.clip(result, 0.0, 1.0) * _SCALE).astype(np.uint16))
    stacked = np.stack(squares) if keep and squares else None
    if not keep:
        log.info("%d images do not fit in the cache; reading them each epoch", len(kept))
    return LoadedImages(samples=kept, squares=stacked, skipped=skipped, prep=prep)


def label_matrix(samples: Sequence[Sample], labels: Sequence[str]) -> np.ndarray:
    """(N, L) float32 truth: 1, 0 or NaN (unknown)."""
    return np.array(
        [[sample.labels.get(label, np.nan) for label in labels] for sample in samples],
        dtype=np.float32,
    ).reshape(len(samples), len(labels))
