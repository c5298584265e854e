"""The ensemble configuration that calibration writes: ``<models_dir>/ensemble.json``.

It names the member bundles with their weights (the seeds' weighted average) and per-finding
operating thresholds of the ensemble, and carries a version. Each new version keeps the one it
replaces in ``<models_dir>/ensemble-history/``. The ``ensemble`` setting, when given, takes
precedence over this file.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from cxr_node.errors import ModelBundleError
from cxr_node.settings import EnsembleMember

ENSEMBLE_FILE = "ensemble.json"
HISTORY_DIR = "ensemble-history"


class EnsembleConfig(BaseModel):
    """Members, weights and operating points of the served ensemble, versioned."""

    model_config = {"extra": "forbid"}

    version: str = Field(min_length=1, max_length=64)
    members: list[EnsembleMember] = Field(min_length=1)
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="per-finding operating points of the ensemble"
    )
    created_at: str = ""
    note: str = ""


def read_ensemble_config(models_dir: Path) -> EnsembleConfig | None:
    """The ensemble configuration in ``models_dir``, or None when there is none."""
    path = models_dir / ENSEMBLE_FILE
    if not path.is_file():
        return None
    try:
        return EnsembleConfig.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ModelBundleError(f"{path}: invalid ensemble configuration: {exc}") from None


def next_version(version: str | None) -> str:
    """1 -> 2, "3" -> "4"; anything else gets a numeric suffix."""
    if version is None:
        return "1"
    head, _, tail = version.rpartition(".")
    if version.isdigit():
        return str(int(version) + 1)
    if tail.isdigit():
        return f"{head}.{int(tail) + 1}"
    return f"{version}.1"


def write_ensemble_config(models_dir: Path, config: EnsembleConfig) -> Path:
    """Write ``config`` as the current version; the previous one moves to the history."""
    path = models_dir / ENSEMBLE_FILE
    previous = read_ensemble_config(models_dir)
    if previous is not None:
        history = models_dir / HISTORY_DIR
        history.mkdir(parents=True, exist_ok=True)
        (history / f"ensemble-{previous.version}.json").write_text(path.read_text())
    if not config.created_at:
        config = config.model_copy(
            update={"created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        )
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(
        json.dumps(config.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
    )
    temporary.replace(path)
    return path
