"""The other kinds of destination: a RIS by HL7 v2 over MLLP, an archive by DICOMweb STOW-RS.

``destinations`` in the configuration holds all three kinds side by side; ``kind`` tells them
apart (``dicom`` when absent, and for the short form ``AE@HOST:PORT``). Routing, shadow mode,
leases and retries treat them alike; only the sender differs (``workers/deliver/``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, SecretStr, Tag, model_validator

from cxr_node.destinations import Destination, TlsOptions

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_HL7_TEXT = re.compile(r"^[^|^~\\&\r\n]{0,180}$")
HL7_PRIORITIES = ("S", "A", "R")
"""HL7 table 0027 priorities we send, highest first: stat, as soon as possible, routine."""


def _default_priority_map() -> dict[
    Literal["critical", "abnormal", "routine"], Literal["S", "A", "R"]
]:  # fmt: skip
    return {"critical": "S", "abnormal": "A", "routine": "R"}


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"destination name {name!r}: letters, digits, _ . - only")
    return name


class Hl7Destination(BaseModel):
    """A RIS or reporting worklist that receives an ORU^R01 (HL7 v2.5.1) per study over MLLP."""

    model_config = {"extra": "forbid"}

    kind: Literal["hl7"]
    name: str = Field(description="how the ledger and routes refer to it")
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsOptions | None = None
    sending_application: str = Field(default="CXR_NODE", description="MSH-3")
    sending_facility: str = Field(default="", description="MSH-4")
    receiving_application: str = Field(default="", description="MSH-5")
    receiving_facility: str = Field(default="", description="MSH-6")
    priority_map: dict[Literal["critical", "abnormal", "routine"], Literal["S", "A", "R"]] = Field(
        default_factory=_default_priority_map,
        description="our priority -> HL7 priority (table 0027); never lower than the order's",
    )
    not_analysed: bool = Field(
        default=True, description="send an ORU saying a study was not analysed, and why"
    )
    timeout_seconds: float = Field(default=30.0, gt=0.0, le=600.0)
    shadow: bool = Field(default=False, description="still receives results in shadow mode")

    @model_validator(mode="after")
    def _valid(self) -> Hl7Destination:
        _check_name(self.name)
        self.priority_map = {**_default_priority_map(), **self.priority_map}  # a partial map
        for field in ("sending_application", "sending_facility", "receiving_application",
                      "receiving_facility"):  # fmt: skip
            if not _HL7_TEXT.match(getattr(self, field)):
                raise ValueError(f"{field}: no HL7 delimiters (| ^ ~ \\ &) or line breaks")
        return self

    @property
    def address(self) -> str:
        """Where it is, for people: HOST:PORT."""
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = " (TLS)" if self.tls is not None else ""
        return f"HL7 MLLP {self.address}{scheme}"


class DicomWebDestination(BaseModel):
    """An archive that stores our SR and SC by STOW-RS (PS3.18 10.5)."""

    model_config = {"extra": "forbid"}

    kind: Literal["dicomweb"]
    name: str = Field(description="how the ledger and routes refer to it")
    url: str = Field(description="the DICOMweb base URL, e.g. http://pacs:8042/dicom-web")
    username: str | None = Field(default=None, description="HTTP basic authentication")
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="a bearer token")
    ca_file: str | None = Field(default=None, description="CA bundle for https (default: system)")
    verify_tls: bool = Field(default=True, description="verify the server's certificate")
    timeout_seconds: float = Field(default=30.0, gt=0.0, le=600.0)
    shadow: bool = Field(default=False, description="still receives results in shadow mode")

    @model_validator(mode="after")
    def _valid(self) -> DicomWebDestination:
        _check_name(self.name)
        if not re.match(r"^https?://[^\s/@]+(/|$)", self.url):
            raise ValueError(
                "url: an http:// or https:// base URL, without credentials in it "
                "(use username and password, or token)"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.token is not None and self.username is not None:
            raise ValueError("either basic authentication or a bearer token, not both")
        return self

    @property
    def address(self) -> str:
        """Where it is, for people: the base URL."""
        return self.url

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return "dicom"
    if isinstance(value, dict):
        return str(value.get("kind", "dicom"))
    return str(getattr(value, "kind", "dicom"))


AnyDestination = Annotated[
    Annotated[Destination, Tag("dicom")]
    | Annotated[Hl7Destination, Tag("hl7")]
    | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_kind),
]
"""A configured destination of any kind."""


DESTINATION_KINDS: dict[str, type[BaseModel]] = {
    "dicom": Destination,
    "hl7": Hl7Destination,
    "dicomweb": DicomWebDestination,
}
"""Each ``kind`` and its model (for messages about a destination's keys)."""
