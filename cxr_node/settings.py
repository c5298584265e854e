"""The one place configuration is read: defaults < YAML file < environment < command-line flags.

Environment variables are prefixed ``CXR_NODE_`` (nested keys joined with ``__``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from cxr_node.destination_kinds import DESTINATION_KINDS, AnyDestination
from cxr_node.destinations import ListenerTls, SourceRule, validate_ae_title
from cxr_node.errors import ConfigurationError
from cxr_node.intake import EligibilityRules


class EnsembleMember(BaseModel):
    """One model bundle of the ensemble and its weight in the weighted average."""

    bundle: str = Field(description="Bundle directory name under models_dir, or a path")
    weight: float = Field(default=1.0, gt=0.0)


class HttpTls(BaseModel):
    """HTTPS for the web app: its certificate (PEM, with the chain) and private key."""

    model_config = {"extra": "forbid"}

    cert_file: Path
    key_file: Path


class Settings(BaseSettings):
    """Validated configuration of a cxr-node process (serve, worker, analyze)."""

    model_config = SettingsConfigDict(
        env_prefix="CXR_NODE_", env_nested_delimiter="__", extra="forbid"
    )

    ae_title: str = Field(default="CXR_NODE", description="Our AE title (1-16 characters)")
    additional_ae_titles: list[str] = Field(
        default_factory=list, description="other AE titles the listener answers to"
    )
    bind_address: str = Field(default="0.0.0.0", description="Address the listener binds")
    port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Field(default=Path("var"), description="Root of spool, ledger and queue")
    spool_dir: Path | None = Field(default=None, description="Default: <data_dir>/spool")
    models_dir: Path | None = Field(default=None, description="Default: <data_dir>/models")
    ledger_url: str | None = Field(default=None, description="Default: sqlite in data_dir")
    broker_url: SecretStr | None = Field(
        default=None, description="redis://... ; unset means the embedded queue"
    )
    destinations: Annotated[list[AnyDestination], NoDecode] = Field(
        default_factory=list, description="AE@HOST:PORT, or mappings with name, tls ..."
    )
    sources: list[SourceRule] = Field(
        default_factory=list, description="known senders and where their results go"
    )
    require_known_sources: bool | None = Field(
        default=None,
        description="refuse associations from unknown calling AE titles; unset: on unless "
        "every installed model is a DEMO",
    )
    default_destinations: list[str] | None = Field(
        default=None, description="destinations for senders without a rule; unset: all"
    )
    shadow_mode: bool = Field(
        default=False,
        description="analyse and record every study, deliver only to destinations marked shadow",
    )
    delivery_timeout_seconds: float = Field(default=30.0, gt=0.0, le=600.0)
    delivery_retry_initial_seconds: float = Field(default=2.0, gt=0.0, le=3600.0)
    delivery_retry_max_seconds: float = Field(default=300.0, gt=0.0, le=86400.0)
    delivery_give_up_after_seconds: float = Field(
        default=86400.0, gt=0.0, description="a destination down longer than this gets FAILED"
    )
    delivery_concurrency: int = Field(
        default=4, ge=1, le=64, description="destinations served at once by a delivery worker"
    )
    association_idle_seconds: float = Field(
        default=10.0, ge=0.0, le=600.0, description="keep a delivery association open this long"
    )
    not_analysed_report: bool = Field(
        default=True, description="send an SR saying the AI did not analyse a study, and why"
    )
    study_quiet_seconds: float = Field(
        default=2.0, ge=0.0, le=3600.0, description="assemble a study once quiet this long"
    )
    assemble_on_release: bool = Field(
        default=True,
        description="a study is complete when the association that sent it is released",
    )
    eligibility: EligibilityRules = Field(
        default_factory=EligibilityRules, description="what is analysed (docs/architecture)"
    )
    ensemble: list[EnsembleMember] = Field(
        default_factory=list, description="Empty: every bundle found in models_dir, weight 1"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(
        default=None, ge=1, le=256, description="default: CPU cores / analysis_concurrency"
    )
    analysis_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="studies analysed at once by one worker process (default: see architecture)",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="images per forward pass when analyses run at once; default: 1 on a CPU "
        "(single-threaded streams beat one batched stream there), the analysis concurrency "
        "on a GPU",
    )
    max_batch_wait_ms: float = Field(
        default=5.0, ge=0.0, le=1000.0, description="how long a batch waits for more images"
    )
    inference_bf16: bool = Field(
        default=False,
        description="on CUDA, run the forward pass in bf16 autocast (faster); off by default: "
        "thresholds are chosen on float32 outputs, and bf16 moves probabilities slightly",
    )
    jpeg2000_reduced_decode: bool = Field(
        default=False,
        description="decode JPEG 2000 images at a reduced resolution level (about 2.5x faster); "
        "off by default: the display's range then comes from fewer pixels, so what the model "
        "sees differs slightly from a full decode (docs/benchmarks.md, issue 16)",
    )
    gradcam_top_k: int = Field(
        default=3, ge=0, le=18, description="Grad-CAM also for the k highest-ranked findings"
    )
    critical_findings: list[str] = Field(default_factory=lambda: ["Pneumothorax"])
    abnormality_score: Literal["max_normalised", "max_probability"] = Field(
        default="max_normalised", description="How the study score is made (docs/architecture)"
    )
    tls: ListenerTls | None = Field(default=None, description="DICOM TLS on the listener")
    max_pdu: int = Field(default=262144, ge=0)
    max_associations: int = Field(default=16, ge=1, le=1000)
    acse_timeout_seconds: float = Field(
        default=5.0,
        gt=0.0,
        description="a connection's A-ASSOCIATE-RQ must arrive whole within this (ARTIM timer)",
    )
    max_association_request_bytes: int = Field(
        default=256 * 1024,
        ge=4096,
        description="longer A-ASSOCIATE-RQ (or other non-data) PDUs: the connection is aborted",
    )
    dimse_timeout_seconds: float = Field(default=60.0, gt=0.0)
    network_timeout_seconds: float = Field(default=60.0, gt=0.0)
    max_instance_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="larger instances: Out of Resources"
    )
    spool_min_free_bytes: int = Field(
        default=512 * 1024 * 1024, ge=0, description="below this free space: Out of Resources"
    )
    spool_retention_hours: float = Field(
        default=168.0,
        ge=0.0,
        description="delete a finished study's files this long after it finished; 0 keeps all",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    http_port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="the web app's port (worklist, API, metrics); 0: serve runs no web server",
    )
    http_bind_address: str = Field(default="0.0.0.0", description="address the web app binds")
    http_tls: HttpTls | None = Field(default=None, description="HTTPS for the web app")
    worklist_ageing_minutes: float = Field(
        default=60.0,
        gt=0.0,
        description="a study waiting this long climbs one worklist band (nothing waits forever)",
    )
    session_hours: float = Field(
        default=8.0, gt=0.0, le=24 * 30, description="a web session expires after this"
    )

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator("additional_ae_titles")
    @classmethod
    def _check_additional_titles(cls, values: list[str]) -> list[str]:
        return [validate_ae_title(value) for value in values]

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [part for part in text.split(",") if part.strip()]
        if isinstance(value, list):
            return [v.strip() if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"destination names must be unique ({', '.join(duplicates)}): give each a name"
            )
        referenced = [n for rule in self.sources for n in rule.destinations]
        referenced += self.default_destinations or []
        unknown = sorted(set(referenced) - set(names))
        if unknown:
            raise ValueError(f"routes name unknown destinations: {', '.join(unknown)}")
        return self

    def destination(self, name: str) -> AnyDestination | None:
        """The configured destination called ``name``, or None."""
        return next((d for d in self.destinations if d.name == name), None)

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in {"redis", "rediss", "amqp", "amqps"}:
            raise ValueError("broker_url must be redis://, rediss://, amqp:// or amqps://")
        return value

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        if self.spool_dir is None:
            self.spool_dir = self.data_dir / "spool"
        if self.models_dir is None:
            self.models_dir = self.data_dir / "models"
        if self.ledger_url is None:
            self.ledger_url = f"sqlite:///{(self.data_dir / 'ledger.sqlite').resolve()}"
        return self

    @property
    def spool_path(self) -> Path:
        """The spool directory (always set after validation)."""
        assert self.spool_dir is not None
        return self.spool_dir

    @property
    def models_path(self) -> Path:
        """The model bundles directory (always set after validation)."""
        assert self.models_dir is not None
        return self.models_dir

    @property
    def ledger(self) -> str:
        """The ledger database URL (always set after validation)."""
        assert self.ledger_url is not None
        return self.ledger_url

    @property
    def embedded_queue(self) -> bool:
        """True when no broker is configured: the durable embedded queue is used."""
        return self.broker_url is None

    @property
    def queue_dir(self) -> Path:
        """Folder of the embedded queue's message files."""
        return self.data_dir / "queue"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from file, environment and flags; raise ConfigurationError on bad values."""
    if config_file is not None and not config_file.is_file():
        raise ConfigurationError(f"configuration file {config_file} does not exist")
    flags = {key: value for key, value in overrides.items() if value is not None}

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        loaded = _FileSettings(**flags)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None
    except (ValueError, yaml.YAMLError) as exc:  # malformed YAML or JSON
        where = f"configuration file {config_file}" if config_file else "configuration"
        raise ConfigurationError(f"{where}: {exc}") from None
    return loaded


def _model_at(path: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that holds the keys at ``path`` (list indices skipped), or None."""
    model: type[BaseModel] | None = Settings
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        model = _nested_model(field.annotation) if field is not None else None
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[X]``, ``X | None`` or
    ``Annotated[list[X], ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _describe(exc: ValidationError) -> str:
    """One line per bad key: which key, what was wrong, what is allowed."""
    lines = []
    for error in exc.errors():
        location = list(error["loc"])
        kind = None  # a destination's kind: pydantic names the union member in the location
        if location[:1] == ["destinations"] and len(location) > 2:
            kind = DESTINATION_KINDS.get(str(location[2]))
            if kind is not None:
                del location[2]
        key = ".".join(str(part) for part in location) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            level = (
                kind if kind is not None and len(location) == 3 else _model_at(error["loc"][:-1])
            )
            allowed = ", ".join(sorted(level.model_fields)) if level else "(none)"
            message = f"unknown key; allowed keys here: {allowed}"
        lines.append(f"configuration key '{key}': {message}")
    return "; ".join(lines)
