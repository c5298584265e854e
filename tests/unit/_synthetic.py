"""Synthetic test inputs (a DX chest image, hand-made analyses) and validator helpers.

Everything here is synthetic (made up in memory); no real patient data.
The image follows PS3.3 A.26.1 Digital X-Ray Image IOD, For Presentation,
with its Type 1 and Type 2 attributes filled so that dciodvfy reports no errors.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from cxr_node.jobs import (
    CodedConcept,
    Finding,
    ImageAnalysis,
    ModelInfo,
    ModelMember,
    Priority,
    Region,
)

ROWS = 256
COLUMNS = 256


def _pixels(rows: int, columns: int) -> np.ndarray:
    """A smooth, chest-like uint16 gradient (12 bits stored)."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    lungs = np.exp(
        -(((x - columns * 0.3) / (columns * 0.15)) ** 2 + ((y - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    lungs += np.exp(
        -(((x - columns * 0.7) / (columns * 0.15)) ** 2 + ((y - rows * 0.5) / (rows * 0.3)) ** 2)
    )
    image = 3000.0 - 2000.0 * lungs
    return np.clip(image, 0, 4095).astype(np.uint16)


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _add_patient_study(ds: Dataset) -> None:
    ds.PatientName = "SYNTHETIC^CHEST"
    ds.PatientID = "SYN-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA (synthetic)"


def _add_series_equipment(ds: Dataset) -> None:
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate = "20240102"
    ds.SeriesTime = "101500"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Synthetic Imaging"
    ds.ManufacturerModelName = "Phantom 1"
    ds.PatientPosition = ""


def _add_image(ds: Dataset, pixels: np.ndarray) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.ContentDate = "20240102"
    ds.ContentTime = "101501"
    ds.AcquisitionDate = "20240102"
    ds.AcquisitionTime = "101501"
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels.tobytes()


def _add_dx_modules(ds: Dataset) -> None:
    ds.ImageLaterality = "U"
    ds.BodyPartExamined = "CHEST"
    ds.AnatomicRegionSequence = Sequence([_code_item("816094009", "SCT", "Chest")])
    ds.ViewPosition = "PA"
    ds.ViewCodeSequence = Sequence([_code_item("399348003", "SCT", "postero-anterior")])
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.AcquisitionContextSequence = Sequence()
    ds.PositionerType = ""
    ds.KVP = "120"
    ds.DistanceSourceToDetector = "1800"


def make_dx_chest(rows: int = ROWS, columns: int = COLUMNS) -> Dataset:
    """A synthetic DX For Presentation chest PA, MONOCHROME2, uint16 (PS3.3 A.26.1)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    _add_patient_study(ds)
    _add_series_equipment(ds)
    _add_image(ds, _pixels(rows, columns))
    _add_dx_modules(ds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def make_analysis(
    sop_instance_uid: str, *, demo: bool, rows: int = ROWS, columns: int = COLUMNS
) -> ImageAnalysis:
    """Two findings: a positive effusion with a region, a negative pneumothorax."""
    effusion = Finding(
        label="Effusion",
        code=CodedConcept(value="60046008", scheme="SCT", meaning="Pleural effusion"),
        probability=0.8125,
        threshold=0.5,
        positive=True,
        region=Region(
            x_min=columns * 0.1, y_min=rows * 0.55, x_max=columns * 0.45, y_max=rows * 0.9
        ),
    )
    pneumothorax = Finding(
        label="Pneumothorax",
        code=CodedConcept(value="36118008", scheme="SCT", meaning="Pneumothorax"),
        probability=0.0625,
        threshold=0.5,
        positive=False,
    )
    model = ModelInfo(
        name="cxr-densenet-ensemble",
        version="0.1.0",
        demo=demo,
        members=[ModelMember(name="densenet121-a", version="0.1.0", sha256="0" * 64)],
        device_uid=generate_uid(),
    )
    return ImageAnalysis(
        sop_instance_uid=sop_instance_uid,
        findings=[effusion, pneumothorax],
        abnormality_score=0.8125,
        priority=Priority.ABNORMAL,
        model=model,
    )


# --- corpus access for the encoder tests ---------------------------------------------


def corpus_file(relative: str) -> Path:
    """A file of the real-world corpus ($CXR_CORPUS), or skip saying why."""
    root = os.environ.get("CXR_CORPUS")
    if not root:
        pytest.skip("CXR_CORPUS not set: real-corpus checks skipped")
    path = Path(root) / relative
    if not path.is_file():
        pytest.skip(f"{relative} not in the corpus at $CXR_CORPUS")
    return path


def crude_display(ds: Dataset) -> np.ndarray:
    """Min-max normalised uint8, inverted for MONOCHROME1: enough for encoder tests."""
    pixels = ds.pixel_array.astype(np.float32)
    span = max(float(pixels.max() - pixels.min()), 1.0)
    unit = (pixels - pixels.min()) / span
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.asarray(np.round(unit * 255.0), dtype=np.uint8)
