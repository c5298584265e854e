"""Where results go: destinations (C-STORE SCPs, optionally over TLS) and per-source routing.

A destination is configuration, named so that the ledger can refer to it and a changed host or
certificate takes effect on the next attempt. Routing decides, per calling AE title (and
optionally its address), which destinations receive the results of the studies it sends.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, field_validator, model_validator

_SHORT_FORM = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def validate_ae_title(value: str) -> str:
    """An AE title is 1-16 characters of the default repertoire, no backslash (PS3.5 6.2, AE VR)."""
    stripped = value.strip()
    if not stripped or len(value) > 16 or "\\" in value or not value.isascii():
        raise ValueError("an AE title is 1 to 16 ASCII characters, not all spaces, no backslash")
    if any(ord(ch) < 32 for ch in value):
        raise ValueError("an AE title may not contain control characters")
    return stripped


class TlsOptions(BaseModel):
    """DICOM TLS (PS3.15 Annex B.1, the Basic TLS Secure Transport Connection Profile)."""

    model_config = {"extra": "forbid"}

    ca_file: Path | None = Field(
        default=None, description="CA bundle that signs the peer; default: the system's"
    )
    cert_file: Path | None = Field(default=None, description="our certificate (client auth)")
    key_file: Path | None = Field(default=None, description="our private key (client auth)")
    verify_hostname: bool = Field(
        default=True, description="the peer's certificate must name the host we connect to"
    )

    @model_validator(mode="after")
    def _pairs(self) -> TlsOptions:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for connecting to the peer (TLS 1.2 or later, peer verified)."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.verify_hostname
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class ListenerTls(BaseModel):
    """DICOM TLS on our listener (PS3.15 B.1): our certificate, and who may connect."""

    model_config = {"extra": "forbid"}

    cert_file: Path = Field(description="our certificate (PEM), with its chain")
    key_file: Path = Field(description="its private key (PEM)")
    ca_file: Path | None = Field(default=None, description="CA that signs client certificates")
    require_client_certificate: bool = Field(
        default=True, description="refuse a TLS client without a certificate that ca_file signs"
    )

    @model_validator(mode="after")
    def _client_auth_needs_ca(self) -> ListenerTls:
        if self.require_client_certificate and self.ca_file is None:
            raise ValueError("require_client_certificate needs ca_file")
        return self

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for accepting associations (TLS 1.2 or later)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        context.verify_mode = (
            ssl.CERT_REQUIRED if self.require_client_certificate else ssl.CERT_OPTIONAL
        )
        if self.ca_file is None:
            context.verify_mode = ssl.CERT_NONE
        return context


class Destination(BaseModel):
    """A C-STORE SCP that receives our results (PS3.4 Annex B), known by its name."""

    model_config = {"extra": "forbid"}

    kind: Literal["dicom"] = Field(default="dicom", description="C-STORE (PS3.4 Annex B)")
    name: str = Field(default="", description="how the ledger and routes refer to it")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: TlsOptions | None = None
    shadow: bool = Field(
        default=False, description="still receives results in shadow mode (shadow_mode)"
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_short_form(value)
        return value

    @model_validator(mode="after")
    def _default_name(self) -> Destination:
        if not self.name:
            self.name = self.ae_title
        if not _NAME.match(self.name):
            raise ValueError(f"destination name {self.name!r}: letters, digits, _ . - only")
        return self

    @property
    def address(self) -> str:
        """Where it is, for people: AE@HOST:PORT."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        scheme = " (TLS)" if self.tls is not None else ""
        return f"{self.address}{scheme}"


def parse_short_form(value: str) -> dict[str, Any]:
    """``AE@HOST:PORT`` as the fields of a :class:`Destination` (named after its AE title)."""
    match = _SHORT_FORM.match(value.strip())
    if not match:
        raise ValueError(f"destination {value!r} is not of the form AE@HOST:PORT")
    return {"ae_title": match["ae"], "host": match["host"], "port": int(match["port"])}


def parse_destination(value: str) -> Destination:
    """Parse ``AE@HOST:PORT`` into a :class:`Destination`."""
    return Destination.model_validate(value)


class SourceRule(BaseModel):
    """A known sender and the destinations that receive the results of its studies."""

    model_config = {"extra": "forbid"}

    ae_title: str = Field(description="the calling AE title of the sender")
    host: str | None = Field(default=None, description="optionally its IP address or network")
    destinations: list[str] = Field(default_factory=list, description="destination names")

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_network(value, strict=False)  # raises ValueError when it is not one
        return value

    def matches(self, calling_ae: str, address: str | None) -> bool:
        """True when the association comes from this source (AE title, and address if set)."""
        if calling_ae.strip() != self.ae_title:
            return False
        if self.host is None:
            return True
        if address is None:
            return False
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return False


class Routable(Protocol):
    """What routing needs of a destination of any kind."""

    @property
    def name(self) -> str: ...

    @property
    def shadow(self) -> bool: ...


SourceProvider = Callable[[], list[SourceRule]]
"""Returns the sources managed at run time (``cxr-node aet``), read from the ledger."""


class Router:
    """Per-source routing and access: which senders are known, where their results go.

    Sources come from the configuration file and from the ledger (``cxr-node aet add``); the
    ledger's are re-read at most every ``refresh_seconds``, so changes apply without a restart.
    Run-time sources come first: an operator's ``aet add`` overrides a file rule.

    In shadow mode (``shadow_mode``) studies are still analysed and recorded, but their results
    go only to the destinations marked ``shadow: true`` among those the route names; with none
    so marked, nowhere.
    """

    def __init__(
        self,
        destinations: Sequence[Routable],
        sources: list[SourceRule],
        default_destinations: list[str] | None,
        managed_sources: SourceProvider | None = None,
        refresh_seconds: float = 2.0,
        *,
        shadow_mode: bool = False,
    ) -> None:
        self.shadow_mode = shadow_mode
        """Deliver only to destinations marked ``shadow``; studies are recorded as shadow."""
        self._shadow_destinations = frozenset(d.name for d in destinations if d.shadow)
        self._configured = list(sources)
        self._managed_provider = managed_sources
        self._refresh_seconds = refresh_seconds
        self._managed: list[SourceRule] = []
        self._read_at = -float("inf")
        self._lock = threading.Lock()
        self._default = (
            [d.name for d in destinations]
            if default_destinations is None
            else list(default_destinations)
        )

    def sources(self) -> list[SourceRule]:
        """Every known source, run-time ones first."""
        if self._managed_provider is not None:
            with self._lock:
                now = time.monotonic()
                if now - self._read_at >= self._refresh_seconds:
                    self._managed = self._managed_provider()
                    self._read_at = now
                managed = list(self._managed)
        else:
            managed = []
        return managed + self._configured

    def known_source(self, calling_ae: str, address: str | None) -> SourceRule | None:
        """The rule that matches a sender, or None when it is unknown."""
        return next((r for r in self.sources() if r.matches(calling_ae, address)), None)

    def destinations_for(self, calling_ae: str, address: str | None = None) -> list[str]:
        """Destination names for a study sent by ``calling_ae`` from ``address``: its rule's, or
        the default ones; in shadow mode only those of them marked ``shadow``."""
        rule = self.known_source(calling_ae, address)
        names = list(rule.destinations) if rule is not None else list(self._default)
        if self.shadow_mode:
            return [name for name in names if name in self._shadow_destinations]
        return names
