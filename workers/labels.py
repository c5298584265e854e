"""Chest X-ray finding labels (torchxrayvision / NIH ChestX-ray14 / CheXpert names) and codes.

SNOMED CT codes where the concept is unambiguous; the rest use the private scheme
``99CXRNODE`` until a coding review assigns RadLex or SNOMED CT (PS3.3 8.8: private coding
schemes are allowed, and dciodvfy warns once about them).
"""

from __future__ import annotations

from cxr_node.jobs import CodedConcept

PRIVATE_SCHEME = "99CXRNODE"

_SNOMED: dict[str, tuple[str, str]] = {
    "Atelectasis": ("46621007", "Atelectasis"),
    "Consolidation": ("95436008", "Lung consolidation"),
    "Pneumothorax": ("36118008", "Pneumothorax"),
    "Edema": ("19242006", "Pulmonary edema"),
    "Emphysema": ("87433001", "Pulmonary emphysema"),
    "Fibrosis": ("51615001", "Fibrosis of lung"),
    "Effusion": ("60046008", "Pleural effusion"),
    "Pneumonia": ("233604007", "Pneumonia"),
    "Cardiomegaly": ("8186001", "Cardiomegaly"),
    "Hernia": ("84089009", "Hiatal hernia"),
    "Fracture": ("125605004", "Fracture of bone"),
}

TORCHXRAYVISION_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
"""The 18 outputs of torchxrayvision's DenseNet-121 models, in their order."""


def code_for(label: str) -> CodedConcept:
    """The code of a finding label: SNOMED CT when known, else the private scheme."""
    if label in _SNOMED:
        value, meaning = _SNOMED[label]
        return CodedConcept(value=value, scheme="SCT", meaning=meaning)
    readable = label.replace("_", " ")
    value = "CXR-" + "".join(ch for ch in label.upper() if ch.isalnum())[:12]
    return CodedConcept(value=value, scheme=PRIVATE_SCHEME, meaning=readable)
