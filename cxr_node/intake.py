"""Eligibility: which received instances the frontal chest model may read, and why not.

Header-only rules, tolerant of sloppy real-world headers (a missing body part is accepted), strict
where safety needs it (an explicit lateral or another body part is not analysed). Pixel-level
checks (decodable, not constant) happen in the worker. Every refusal carries a reason code.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS", "CHEST_PA", "CHEST_AP"})
"""Body Part Examined values (PS3.16 CID 4031 and common vendor variants) that mean chest."""

LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})
"""View Position values (PS3.3 C.8.11.5) of lateral projections: not for a frontal model."""

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX"})

MIN_DIMENSION = 64
MAX_DIMENSION = 16384


@dataclass(frozen=True)
class Decision:
    """Whether an instance is analysed; when not, a stable reason code and a readable reason."""

    eligible: bool
    reason_code: str | None = None
    reason: str | None = None


ELIGIBLE = Decision(eligible=True)


def _refuse(code: str, reason: str) -> Decision:
    return Decision(eligible=False, reason_code=code, reason=reason)


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def evaluate(dataset: Dataset) -> Decision:
    """Decide from the header whether the frontal chest model should read this instance."""
    sop_class = dataset.get("SOPClassUID")
    if sop_class == DigitalXRayImageStorageForProcessing:
        return _refuse("FOR_PROCESSING", "DX For Processing images are not analysed")
    if sop_class not in {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        SecondaryCaptureImageStorage,
    }:
        return _refuse("SOP_CLASS", "SOP class is not CR, DX or Secondary Capture")
    if _text(dataset, "PresentationIntentType") == "FOR PROCESSING":
        return _refuse("FOR_PROCESSING", "Presentation Intent Type is FOR PROCESSING")

    modality = _text(dataset, "Modality")
    if modality not in RADIOGRAPH_MODALITIES:
        if sop_class == SecondaryCaptureImageStorage:
            return _refuse("SC_NOT_RADIOGRAPH", "Secondary Capture does not say it holds a CR/DX")
        return _refuse("MODALITY", "modality is not CR or DX")

    body_part = _text(dataset, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return _refuse("BODY_PART", "body part examined is not the chest")

    view = _text(dataset, "ViewPosition")
    if view in LATERAL_VIEWS:
        return _refuse("LATERAL_VIEW", "lateral view: the model reads frontal (PA/AP) images")

    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        return _refuse("NO_PIXEL_DATA", "the instance has no pixel data")
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not isinstance(rows, int) or not isinstance(columns, int):
        return _refuse("NO_DIMENSIONS", "Rows or Columns is missing")
    if min(rows, columns) < MIN_DIMENSION:
        return _refuse("TOO_SMALL", f"image smaller than {MIN_DIMENSION} pixels on a side")
    if max(rows, columns) > MAX_DIMENSION:
        return _refuse("TOO_LARGE", f"image larger than {MAX_DIMENSION} pixels on a side")
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        return _refuse("MULTI_FRAME", "multi-frame images are not analysed")
    return ELIGIBLE
