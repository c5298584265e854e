"""The queue contract: what travels between the DICOM edge and the workers.

Messages are plain JSON (pydantic models), never pickled Datasets, so that an edge
without torch and a GPU worker on another machine agree on them.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class InferenceJob(BaseModel):
    """One study to analyse: which spooled instances, and where the results go."""

    study_key: str = Field(description="Sanitised key of the study in the ledger")
    instance_paths: list[str] = Field(
        description="Spool-relative paths of the eligible images when the study was assembled; "
        "the worker re-reads the ledger at claim time, which is authoritative"
    )
    destinations: list[str] = Field(
        default_factory=list, description="names of the destinations that receive the results"
    )


class CodedConcept(BaseModel):
    """A code triple (PS3.3 Section 8.8): value, scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


class Region(BaseModel):
    """Hottest Grad-CAM region as a box in source image pixel coordinates (column, row)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float


class Finding(BaseModel):
    """One label's result at the model's operating point."""

    label: str
    code: CodedConcept
    probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0)
    positive: bool
    region: Region | None = None


class Priority(StrEnum):
    """Triage priority derived from the findings."""

    ROUTINE = "routine"
    ABNORMAL = "abnormal"
    CRITICAL = "critical"


class ModelMember(BaseModel):
    """One network of the ensemble, as its bundle declares it."""

    name: str
    version: str
    sha256: str
    weight: float = 1.0


class ModelInfo(BaseModel):
    """The ensemble that produced a result (IHE AIR algorithm identification)."""

    name: str
    version: str
    demo: bool
    members: list[ModelMember]
    device_uid: str = Field(description="A UID that changes whenever the model set changes")


class ImageAnalysis(BaseModel):
    """Everything the analysis says about one image, as data before it becomes DICOM."""

    sop_instance_uid: str
    findings: list[Finding]
    abnormality_score: float = Field(ge=0.0, le=1.0)
    priority: Priority
    model: ModelInfo

    @property
    def positive_findings(self) -> list[Finding]:
        """Positive findings, most probable first."""
        return sorted(
            (f for f in self.findings if f.positive), key=lambda f: f.probability, reverse=True
        )
