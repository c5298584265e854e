"""A synthetic task that a network must learn: a self-test of training, not chest X-ray data.

Each image is smooth random texture with a planted pattern per finding present: a bright disc
for the first label, a patch of horizontal stripes for the second, a dark square for the third
(then the three repeat with other sizes). Labels are independent, with a given prevalence.
Images are written as 8-bit PNG with a CheXpert-style CSV (``Path``, ``Patient ID``, ``AP/PA``,
one column per label); patients have one to three images each, so splits by patient matter.
Nothing here says anything clinical.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SYNTHETIC_LABELS = ("Nodule", "Effusion", "Pneumothorax")


def _texture(generator: np.random.Generator, size: int) -> np.ndarray:
    coarse = generator.random((8, 8))
    image = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size)))
    ramp = np.linspace(0.2, 0.8, size)[:, None] * np.ones((1, size))
    noise = generator.normal(0.0, 0.04, (size, size))
    return 0.35 * image / 255.0 + 0.4 * ramp + noise


def _plant(image: np.ndarray, kind: int, generator: np.random.Generator) -> None:
    size = image.shape[0]
    scale = size / 256
    if kind % 3 == 0:  # a bright disc
        radius = (14 + 4 * (kind // 3)) * scale
        cy, cx = generator.uniform(radius, size - radius, 2)
        yy, xx = np.ogrid[:size, :size]
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 0.45
    elif kind % 3 == 1:  # horizontal stripes
        side = int((60 + 10 * (kind // 3)) * scale)
        y0, x0 = generator.integers(0, size - side, 2)
        stripes = (np.arange(side) // max(2, int(4 * scale)) % 2).astype(float)[:, None]
        image[y0 : y0 + side, x0 : x0 + side] += 0.35 * stripes
    else:  # a dark square
        side = int((36 + 8 * (kind // 3)) * scale)
        y0, x0 = generator.integers(0, size - side, 2)
        image[y0 : y0 + side, x0 : x0 + side] -= 0.4


def write_synthetic_task(
    folder: Path,
    images: int = 300,
    labels: Sequence[str] = SYNTHETIC_LABELS,
    size: int = 256,
    prevalence: float = 0.4,
    seed: int = 0,
) -> Path:
    """Write ``images`` PNGs and ``labels.csv`` under ``folder``; return the CSV's path."""
    generator = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    patient = 0
    left_for_patient = 0
    for index in range(images):
        if left_for_patient == 0:
            patient += 1
            left_for_patient = int(generator.integers(1, 4))
        left_for_patient -= 1
        image = _texture(generator, size)
        present = generator.random(len(labels)) < prevalence
        for kind, is_present in enumerate(present):
            if is_present:
                _plant(image, kind, generator)
        name = f"images/patient{patient:05d}_{index:05d}.png"
        pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name)
        rows.append(
            {
                "Path": name,
                "Patient ID": f"patient{patient:05d}",
                "AP/PA": "PA",
                **{label: str(int(p)) for label, p in zip(labels, present, strict=True)},
            }
        )
    csv_path = folder / "labels.csv"
    with csv_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["Path", "Patient ID", "AP/PA", *labels])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
