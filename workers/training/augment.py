"""Training augmentation as a MONAI ``Compose`` on the [0, 1] square (channel first, 1 x S x S).

The seeds' augmentation: random flip and rotation up to 10 degrees; plus a small affine (shift
and zoom up to 5 %) and intensity (contrast gamma, +-10 % scale). Flipping mirrors anatomy (the
heart changes side), so it is offered but not on by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandFlip,
    RandRotate,
    RandScaleIntensity,
)
from monai.transforms.transform import Transform

AUGMENTATIONS = ("flip", "rotate", "affine", "intensity")
DEFAULT_AUGMENTATIONS = ("rotate", "affine", "intensity")
MAX_ROTATION_DEGREES = 10.0


def augmentation(names: Sequence[str], size: int, seed: int) -> Compose:
    """The named augmentations, in a fixed order, seeded (MONAI ``set_random_state``)."""
    unknown = sorted(set(names) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}; known: {AUGMENTATIONS}")
    steps: list[Transform] = []
    if "flip" in names:
        steps.append(RandFlip(prob=0.5, spatial_axis=1))
    if "rotate" in names:
        radians = math.radians(MAX_ROTATION_DEGREES)  # MONAI takes radians
        steps.append(RandRotate(range_x=radians, prob=0.5, padding_mode="zeros"))
    if "affine" in names:
        shift = 0.05 * size
        steps.append(
            RandAffine(
                prob=0.5,
                translate_range=(shift, shift),
                scale_range=(0.05, 0.05),
                padding_mode="zeros",
            )
        )
    if "intensity" in names:
        steps.append(RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)))
        steps.append(RandScaleIntensity(factors=0.1, prob=0.3))
    compose = Compose(steps)
    compose.set_random_state(seed=seed)
    return compose
