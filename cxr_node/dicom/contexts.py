"""The SOP classes and transfer syntaxes we accept and send (PS3.4 Annex B, PS3.5 Section 10)."""

from pydicom.uid import (
    JPEG2000,
    UID,
    Comprehensive3DSRStorage,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

STORAGE_SOP_CLASSES: tuple[UID, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
"""Image storage SOP classes the SCP accepts: CR, DX (both intents) and Secondary Capture."""

ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
"""Every transfer syntax a modality or PACS commonly sends, compressed ones as they are."""

RESULT_SOP_CLASSES: tuple[UID, ...] = (Comprehensive3DSRStorage, SecondaryCaptureImageStorage)
"""SOP classes of what we send: the TID 1500 SRs (results and notices) and the heatmap SC."""
