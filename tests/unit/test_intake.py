"""Header-only eligibility (cxr_node.intake) on in-memory datasets and on the real corpus."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, config
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxr_node.errors import ConfigurationError
from cxr_node.intake import Decision, EligibilityRules, evaluate
from cxr_node.settings import load_settings


def make_chest(
    *,
    sop_class: str = ComputedRadiographyImageStorage,
    modality: str = "CR",
    rows: int = 64,
    columns: int = 64,
    **attributes: object,
) -> Dataset:
    """A minimal chest PA header with (blank) pixel data; keyword=None removes an attribute."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(rows * columns)
    # real devices write lower case and other invalid CS values: do not let pydicom object
    # (an element keeps the validation mode it was created with, so re-create it)
    with config.disable_value_validation():
        for keyword, value in attributes.items():
            if keyword in ds:
                delattr(ds, keyword)
            if value is not None:
                setattr(ds, keyword, value)
    return ds


def refused(decision: Decision, code: str) -> bool:
    return (not decision.eligible) and decision.reason_code == code and bool(decision.reason)


# --- in-memory datasets -----------------------------------------------------------------------


def test_cr_chest_pa_is_eligible() -> None:
    decision = evaluate(make_chest())
    assert decision.eligible
    assert decision.reason_code is None


def test_dx_for_presentation_chest_ap_is_eligible() -> None:
    ds = make_chest(
        sop_class=DigitalXRayImageStorageForPresentation,
        modality="DX",
        ViewPosition="AP",
        PresentationIntentType="FOR PRESENTATION",
    )
    assert evaluate(ds).eligible


def test_missing_body_part_is_eligible() -> None:
    assert evaluate(make_chest(BodyPartExamined=None)).eligible


def test_missing_view_position_is_eligible() -> None:
    assert evaluate(make_chest(ViewPosition=None)).eligible


@pytest.mark.parametrize("body_part", ["chest", " THORAX ", "Chest_PA"])
def test_chest_body_part_spellings_are_eligible(body_part: str) -> None:
    assert evaluate(make_chest(BodyPartExamined=body_part)).eligible


@pytest.mark.parametrize("body_part", ["HIP", "HAND", "SKULL", "ABDOMEN", "CSPINE"])
def test_other_body_part_is_refused(body_part: str) -> None:
    assert refused(evaluate(make_chest(BodyPartExamined=body_part)), "BODY_PART")


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "lat"])
def test_lateral_view_is_refused(view: str) -> None:
    assert refused(evaluate(make_chest(ViewPosition=view)), "LATERAL_VIEW")


def test_dx_for_processing_sop_class_is_refused() -> None:
    ds = make_chest(sop_class=DigitalXRayImageStorageForProcessing, modality="DX")
    assert refused(evaluate(ds), "FOR_PROCESSING")


def test_presentation_intent_for_processing_is_refused() -> None:
    ds = make_chest(
        sop_class=DigitalXRayImageStorageForPresentation,
        modality="DX",
        PresentationIntentType="FOR PROCESSING",
    )
    assert refused(evaluate(ds), "FOR_PROCESSING")


def test_secondary_capture_saying_ot_is_refused() -> None:
    ds = make_chest(sop_class=SecondaryCaptureImageStorage, modality="OT")
    assert refused(evaluate(ds), "SC_NOT_RADIOGRAPH")


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_secondary_capture_of_a_radiograph_is_eligible(modality: str) -> None:
    ds = make_chest(sop_class=SecondaryCaptureImageStorage, modality=modality)
    assert evaluate(ds).eligible


def test_other_sop_class_is_refused() -> None:
    assert refused(evaluate(make_chest(sop_class=CTImageStorage, modality="CT")), "SOP_CLASS")


def test_missing_sop_class_is_refused() -> None:
    assert refused(evaluate(make_chest(SOPClassUID=None)), "SOP_CLASS")


def test_cr_sop_class_with_other_modality_is_refused() -> None:
    assert refused(evaluate(make_chest(modality="MG")), "MODALITY")


def test_no_pixel_data_is_refused() -> None:
    assert refused(evaluate(make_chest(PixelData=None)), "NO_PIXEL_DATA")


def test_no_dimensions_is_refused() -> None:
    assert refused(evaluate(make_chest(Rows=None)), "NO_DIMENSIONS")


@pytest.mark.parametrize(("rows", "columns"), [(16, 16), (63, 512), (512, 63)])
def test_small_image_is_refused(rows: int, columns: int) -> None:
    assert refused(evaluate(make_chest(rows=rows, columns=columns)), "TOO_SMALL")


def test_smallest_allowed_image_is_eligible() -> None:
    assert evaluate(make_chest(rows=64, columns=200)).eligible


def test_huge_image_is_refused() -> None:
    ds = make_chest(rows=64, columns=64)
    ds.Columns = 20000  # header only: no need for the pixels
    assert refused(evaluate(ds), "TOO_LARGE")


def test_multi_frame_is_refused() -> None:
    ds = make_chest(NumberOfFrames=3)
    ds.PixelData = bytes(64 * 64 * 3)
    assert refused(evaluate(ds), "MULTI_FRAME")


def test_single_frame_number_of_frames_is_eligible() -> None:
    assert evaluate(make_chest(NumberOfFrames=1)).eligible


def test_body_part_rule_wins_over_lateral_and_pixel_rules() -> None:
    """A refusal names the first rule that fails: an explicit other body part comes first."""
    ds = make_chest(BodyPartExamined="HIP", ViewPosition="LL", PixelData=None)
    assert refused(evaluate(ds), "BODY_PART")


# --- the real corpus (header rules only) ------------------------------------------------------

# Rows whose role says "reject" but that legitimately pass the *header* rules: the reason is in
# the pixels or outside DICOM, so the worker (pixel checks) or nothing can catch them. These are
# known limitations of header-only eligibility, not failures.
KNOWN_HEADER_PASSES = {
    # no BodyPartExamined, no ViewPosition: the tolerant "missing body part" rule lets it in
    "fo-dicom/CR-ModalitySequenceLUT.dcm",
    # a dog's thorax: BodyPartExamined THORAX is a chest; species is not a header rule
    "highdicom/dx_image_dog_thorax.dcm",
    # a synthetic test pattern with chest tags: only pixel content shows it is no radiograph
    "purecodecs/test16bits.dcm",
}

# Values the test treats as chest: the corpus column BodyPart is checked against this, on its own.
CHEST_WORDS = {"CHEST", "THORAX"}


def _corpus_rows() -> list[dict[str, str]]:
    root = os.environ.get("CXR_CORPUS")
    if not root or not (Path(root) / "inventory.csv").is_file():
        return []
    with open(Path(root) / "inventory.csv", newline="", encoding="utf-8") as stream:
        return [row for row in csv.DictReader(stream) if row["kind"] == "dicom"]


CORPUS_ROWS = _corpus_rows()


def _read(corpus: Path, relative: str) -> Dataset:
    try:
        return pydicom.dcmread(corpus / relative, force=True)
    except Exception as exc:
        pytest.skip(f"{relative} cannot be read at all ({type(exc).__name__})")


def _evaluate_quietly(ds: Dataset) -> Decision:
    """Evaluate as the store handler does: malformed header values are a BAD_HEADER refusal."""
    try:
        return evaluate(ds)
    except Exception as exc:
        return Decision(False, "BAD_HEADER", type(exc).__name__)


@pytest.mark.skipif(not CORPUS_ROWS, reason="CXR_CORPUS is not set")
@pytest.mark.parametrize("row", CORPUS_ROWS, ids=[row["file"] for row in CORPUS_ROWS])
def test_corpus_header_rules_agree_with_role(corpus: Path, row: dict[str, str]) -> None:
    ds = _read(corpus, row["file"])
    role = row["role"]
    decision = _evaluate_quietly(ds)
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()

    if role.startswith("CHEST-FRONTAL (accept"):
        assert decision.eligible, f"{row['file']}: {decision.reason_code} {decision.reason}"
    elif role.startswith("NON-CHEST") and body_part and body_part not in CHEST_WORDS:
        assert not decision.eligible, f"{row['file']} ({body_part}) passed the header rules"
    elif role.startswith("NO PIXEL DATA"):
        assert not decision.eligible, f"{row['file']} passed the header rules"

    # Any other "reject" row that passes the header rules must be a known limitation.
    if "reject" in role and decision.eligible:
        assert row["file"] in KNOWN_HEADER_PASSES, (
            f"{row['file']} ({role}) passes the header rules and is not a known limitation"
        )


@pytest.mark.skipif(not CORPUS_ROWS, reason="CXR_CORPUS is not set")
def test_corpus_has_chest_and_non_chest_rows() -> None:
    """The table-driven test above is only meaningful if the corpus holds both kinds."""
    roles = [row["role"] for row in CORPUS_ROWS]
    assert sum(r.startswith("CHEST-FRONTAL (accept") for r in roles) >= 3
    assert sum(r.startswith("NON-CHEST") for r in roles) >= 3
    assert sum(r.startswith("NO PIXEL DATA") for r in roles) >= 1


# --- configurable rules -------------------------------------------------------------------------


def test_rules_can_be_tightened_or_loosened() -> None:
    strict = EligibilityRules(allow_missing_body_part=False, allow_missing_view=False)
    assert refused(evaluate(make_chest(BodyPartExamined=None), strict), "BODY_PART")
    assert refused(evaluate(make_chest(ViewPosition=None), strict), "VIEW")
    assert evaluate(make_chest(), strict).eligible
    dx_only = EligibilityRules(modalities=["dx"])
    assert refused(evaluate(make_chest(), dx_only), "MODALITY")  # make_chest is a CR
    thorax_too = EligibilityRules(body_parts=["chest", "ribs"])
    assert evaluate(make_chest(BodyPartExamined="RIBS"), thorax_too).eligible
    small = EligibilityRules(min_dimension=4096)
    assert refused(evaluate(make_chest(), small), "TOO_SMALL")


def test_rules_come_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("eligibility:\n  modalities: [DX]\n  min_grey_levels: 64\n")
    settings = load_settings(config)
    assert settings.eligibility.modalities == ["DX"]
    assert settings.eligibility.min_grey_levels == 64
    config.write_text("eligibility:\n  modality: [DX]\n")
    with pytest.raises(ConfigurationError, match="eligibility"):
        load_settings(config)
