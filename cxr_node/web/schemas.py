"""The API's request and response models (the OpenAPI contract at ``/api/openapi.json``).

Every study carries the notice that its results are AI-generated and not a diagnosis, and a
DEMO notice when an untrained demo model produced them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from cxr_node.web.credentials import Role

AI_NOTICE = "AI-generated - not a diagnosis"
DEMO_NOTICE = "DEMO model - not trained, no clinical meaning"


class LoginRequest(BaseModel):
    """A user's name and password."""

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class SessionInfo(BaseModel):
    """A new session: the cookie is set; unsafe requests must send ``csrf_token``."""

    user: str
    role: Role
    csrf_token: str
    expires_at: datetime


class Me(BaseModel):
    """The caller."""

    name: str
    kind: Literal["user", "token"]
    role: Role
    csrf_token: str | None = None


class ModelSummary(BaseModel):
    """The model set that produced a study's results."""

    name: str | None = None
    version: str | None = None
    demo: bool = Field(description="an untrained demo model: results have no clinical meaning")


class Code(BaseModel):
    """A coded concept (as in the SR)."""

    value: str
    scheme: str
    meaning: str


class FindingOut(BaseModel):
    """What the model said about one label in one image."""

    sop_instance_uid: str
    label: str
    code: Code
    probability: float
    threshold: float
    present: bool
    region: dict[str, float] | None = None


class PatientStudy(BaseModel):
    """Patient and study attributes (patient data: authenticated users only, audited)."""

    patient_name: str | None = None
    patient_id: str | None = None
    patient_sex: str | None = None
    patient_birth_date: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    modality: str | None = None


class StudyItem(BaseModel):
    """A study as the worklist shows it."""

    study_uid: str
    state: str
    reason_code: str | None = None
    reason: str | None = None
    received_at: datetime
    waiting_seconds: float
    calling_ae: str | None = None
    priority: str | None = None
    band: Literal["critical", "abnormal", "routine"] = Field(
        description="the worklist band after ageing"
    )
    aged: bool = Field(description="moved up one band for waiting past the ageing time")
    abnormality_score: float | None = None
    top_findings: list[str] = Field(default_factory=list)
    model: ModelSummary | None = None
    patient: PatientStudy | None = None
    notices: list[str] = Field(description="AI-generated, and DEMO where it applies")
    shadow: bool = Field(
        default=False,
        description="received in shadow mode: analysed and recorded, results not sent to PACS "
        "(only to destinations marked shadow)",
    )


class StudyPage(BaseModel):
    """A page of the worklist, in reading order."""

    items: list[StudyItem]
    total: int
    limit: int
    offset: int


class ImageOut(BaseModel):
    """A received image and whether it was eligible for analysis."""

    sop_instance_uid: str
    sop_class_uid: str
    eligible: bool
    reason_code: str | None = None
    reason: str | None = None
    picture: bool = Field(default=False, description="image.png is there (analysed, not purged)")
    heatmaps: list[str] = Field(
        default_factory=list, description="findings with a heatmap.png (?finding=LABEL)"
    )
    rows: int | None = Field(default=None, description="the analysed image's rows (regions' frame)")
    columns: int | None = Field(default=None, description="and columns")


class ResultOut(BaseModel):
    """A result object the node wrote (SR, SC or "not analysed" SR)."""

    sop_instance_uid: str
    source_sop_instance_uid: str
    kind: str


class DeliveryOut(BaseModel):
    """The delivery of a study's results to one destination."""

    destination: str
    state: str
    attempts: int
    last_error: str | None = None
    next_attempt_at: datetime | None = None


class HistoryOut(BaseModel):
    """One state change of the study."""

    at: datetime
    state: str
    detail: str | None = None


class StudyDetail(StudyItem):
    """Everything about one study."""

    images: list[ImageOut]
    findings: list[FindingOut]
    results: list[ResultOut]
    deliveries: list[DeliveryOut]
    history: list[HistoryOut]
    patient_conflicts: int


class Accepted(BaseModel):
    """A request taken in; the work happens in the background."""

    status: Literal["accepted"] = "accepted"
    detail: str


AE_TITLE_PATTERN = r"^ *[!-\[\]-~][ -\[\]-~]*$"
"""PS3.5 AE: 1 to 16 characters of the default repertoire without backslash, not all spaces."""


class SourceIn(BaseModel):
    """A known sender: calling AE title, optional host, where its results go."""

    model_config = {"extra": "forbid"}

    ae_title: str = Field(min_length=1, max_length=16, pattern=AE_TITLE_PATTERN)
    host: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[0-9A-Fa-f:.]+(/[0-9]{1,3})?$",
        description="an IPv4 or IPv6 address or network (CIDR); absent: any",
    )
    destinations: list[str] = Field(default_factory=list)


class SourceOut(SourceIn):
    """A known sender and where it was defined."""

    origin: Literal["ledger", "config"]


class DestinationOut(BaseModel):
    """A destination and its state."""

    name: str
    kind: str
    address: str
    up: bool
    down_since: datetime | None = None
    retry_at: datetime | None = None
    failures: int
    pending: int
    last_error: str | None = None


class ModelOut(BaseModel):
    """An installed model bundle."""

    name: str
    version: str
    description: str
    demo: bool = Field(description="untrained demo weights: no clinical meaning")
    architecture: str
    labels: list[str]
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="the bundle's operating point per finding"
    )
    ensemble_weight: float | None = Field(
        default=None, description="its weight when the configuration names the ensemble"
    )
    ensemble_version: str | None = Field(
        default=None, description="version of the calibrated ensemble.json, when there is one"
    )
    ensemble_thresholds: dict[str, float] = Field(
        default_factory=dict, description="the ensemble's operating points (ensemble.json)"
    )


class UploadFinding(BaseModel):
    """What the model said about one label of an uploaded image."""

    label: str
    code: Code
    probability: float
    threshold: float
    present: bool
    region: dict[str, float] | None = Field(
        default=None, description="hottest region, pixels of the image (x_min, y_min, x_max, y_max)"
    )


class UploadAnalysis(BaseModel):
    """An uploaded file's analysis (not a study: not on the worklist, sent nowhere)."""

    id: str
    status: Literal["done", "pending"]
    abnormality_score: float | None = None
    priority: str | None = None
    findings: list[UploadFinding] = Field(default_factory=list)
    model: ModelSummary | None = None
    image_url: str | None = None
    heatmap_urls: dict[str, str] = Field(default_factory=dict)
    notices: list[str] = Field(default_factory=list)
