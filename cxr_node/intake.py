"""Eligibility: which received instances the frontal chest model may read, and why not.

Header-only rules, tolerant of sloppy real-world headers (a missing body part is accepted), strict
where safety needs it (an explicit lateral or another body part is not analysed). Pixel-level
checks (decodable, not constant, enough grey levels) happen in the worker. Every refusal carries
a reason code. The defaults suit adult frontal chest radiographs; ``eligibility`` in the
configuration changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, field_validator
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


class EligibilityRules(BaseModel):
    """What the node analyses (configuration key ``eligibility``)."""

    model_config = {"extra": "forbid"}

    modalities: list[str] = Field(default_factory=lambda: sorted(RADIOGRAPH_MODALITIES))
    body_parts: list[str] = Field(
        default_factory=lambda: sorted(CHEST_BODY_PARTS),
        description="Body Part Examined values that mean chest",
    )
    allow_missing_body_part: bool = True
    refused_views: list[str] = Field(
        default_factory=lambda: sorted(LATERAL_VIEWS),
        description="View Position values that are not analysed (the model reads PA/AP)",
    )
    allow_missing_view: bool = True
    secondary_capture: bool = Field(
        default=True, description="analyse Secondary Capture that says it holds a CR/DX image"
    )
    min_dimension: int = Field(default=MIN_DIMENSION, ge=1)
    max_dimension: int = Field(default=MAX_DIMENSION, ge=1)
    min_grey_levels: int = Field(
        default=32, ge=2, description="fewer distinct pixel values: not a radiograph"
    )

    @field_validator("modalities", "body_parts", "refused_views")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values]


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


DEFAULT_RULES = EligibilityRules()


_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def evaluate(
    dataset: Dataset, rules: EligibilityRules = DEFAULT_RULES, has_pixel_data: bool | None = None
) -> Decision:
    """Decide from the header whether the frontal chest model should read this instance;
    ``has_pixel_data`` when the header was read without its pixels (None: look in it)."""
    sop_class = dataset.get("SOPClassUID")
    if sop_class == DigitalXRayImageStorageForProcessing:
        return _refuse("FOR_PROCESSING", "DX For Processing images are not analysed")
    accepted = {ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation}
    if rules.secondary_capture:
        accepted.add(SecondaryCaptureImageStorage)
    if sop_class not in accepted:
        return _refuse("SOP_CLASS", "SOP class is not one that is analysed (CR, DX, SC)")
    if _text(dataset, "PresentationIntentType") == "FOR PROCESSING":
        return _refuse("FOR_PROCESSING", "Presentation Intent Type is FOR PROCESSING")

    modality = _text(dataset, "Modality")
    if modality not in rules.modalities:
        if sop_class == SecondaryCaptureImageStorage:
            return _refuse("SC_NOT_RADIOGRAPH", "Secondary Capture does not say it holds a CR/DX")
        return _refuse("MODALITY", f"modality is not one of {', '.join(rules.modalities)}")

    body_part = _text(dataset, "BodyPartExamined")
    if body_part and body_part not in rules.body_parts:
        return _refuse("BODY_PART", "body part examined is not the chest")
    if not body_part and not rules.allow_missing_body_part:
        return _refuse("BODY_PART", "body part examined is missing")

    view = _text(dataset, "ViewPosition")
    if view in rules.refused_views:
        return _refuse("LATERAL_VIEW", "lateral view: the model reads frontal (PA/AP) images")
    if not view and not rules.allow_missing_view:
        return _refuse("VIEW", "view position is missing")

    if has_pixel_data is None:
        has_pixel_data = any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS)
    if not has_pixel_data:
        return _refuse("NO_PIXEL_DATA", "the instance has no pixel data")
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not isinstance(rows, int) or not isinstance(columns, int):
        return _refuse("NO_DIMENSIONS", "Rows or Columns is missing")
    if min(rows, columns) < rules.min_dimension:
        return _refuse("TOO_SMALL", f"image smaller than {rules.min_dimension} pixels on a side")
    if max(rows, columns) > rules.max_dimension:
        return _refuse("TOO_LARGE", f"image larger than {rules.max_dimension} pixels on a side")
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        return _refuse("MULTI_FRAME", "multi-frame images are not analysed")
    return ELIGIBLE
