"""From the displayed image to the network's input, as a bundle declares it (one code path for
serving, training and evaluation, so that a model is measured on exactly what it will see).

displayed image [0, 1] -> centred square (crop or pad) -> area resize to the bundle's size ->
optional histogram equalisation -> [0, 1] square; then the value range and the channels.
Augmentation, when training, acts on the [0, 1] square between the two steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers import geometry
from workers.bundles import Preprocessing


def model_square(image: np.ndarray, prep: Preprocessing) -> tuple[np.ndarray, geometry.SquareBox]:
    """The (size x size) float32 [0, 1] square the network reads, and where it sits in the
    source image (for heatmaps and regions)."""
    box = geometry.square_box(image.shape[0], image.shape[1], prep.square)
    square = geometry.extract_square(image, box)
    tensor = torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(prep.size, prep.size), mode="area")[0, 0].numpy()
    if prep.histogram_equalisation:
        resized = equalise_histogram(resized)
    return resized.astype(np.float32, copy=False), box


def network_input(squares: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """A batch of [0, 1] squares (B, 1, S, S) scaled to the value range, with the channels the
    network was built for (B, C, S, S)."""
    low, high = prep.value_range
    scaled = squares * (high - low) + low
    return scaled.repeat(1, prep.channels, 1, 1) if prep.channels != 1 else scaled


def equalise_histogram(image: np.ndarray, bins: int = 256) -> np.ndarray:
    """Histogram equalisation of a [0, 1] image (optional, as a bundle declares)."""
    histogram, edges = np.histogram(image, bins=bins, range=(0.0, 1.0))
    cdf = histogram.cumsum().astype(np.float32)
    cdf /= cdf[-1]
    return np.interp(image, edges[:-1], cdf).astype(np.float32)
