"""Writing model bundles: a trained one, and a new version of one (the old kept).

The layout is the one the node reads (:mod:`workers.bundles`): ``configs/metadata.json`` and
``models/model.pt``, with the training record beside them in ``configs/``. The metadata is
written last, atomically, so a bundle being written is never served half-made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import torch

from workers.bundles import (
    METADATA_PATH,
    WEIGHTS_PATH,
    BundleMetadata,
    LabelSpec,
    Preprocessing,
    read_bundle,
    sha256_of,
)
from workers.ensemble_config import next_version
from workers.labels import code_for

HISTORY_DIR = Path("configs/history")


def _write_json_atomically(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    temporary.replace(path)


def save_atomically(content: object, path: Path) -> None:
    """``torch.save`` to a temporary file, then renamed: never a half-written file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(content, temporary)
    temporary.replace(path)


def write_trained_bundle(
    folder: Path,
    *,
    name: str,
    version: str,
    description: str,
    architecture: str,
    preprocessing: Preprocessing,
    labels: Sequence[str],
    thresholds: Sequence[float],
    state: Mapping[str, torch.Tensor],
    records: Mapping[str, Any],
) -> Path:
    """Write weights, the training records (``configs/<key>.json``) and, last, the metadata.

    Never a DEMO: these weights were trained by ``cxr-node models train``."""
    weights = folder / WEIGHTS_PATH
    save_atomically(dict(state), weights)
    for key, content in records.items():
        _write_json_atomically(folder / "configs" / f"{key}.json", content)
    metadata = BundleMetadata(
        name=name,
        version=version,
        description=description,
        demo=False,
        architecture=architecture,
        preprocessing=preprocessing,
        labels=[
            LabelSpec(name=label, code=code_for(label), threshold=float(threshold))
            for label, threshold in zip(labels, thresholds, strict=True)
        ],
        weights_sha256=sha256_of(weights),
        license="trained locally with cxr-node; see configs/training.json for the data",
        monai_version=monai.__version__,
        pytorch_version=torch.__version__,
    )
    _write_json_atomically(folder / METADATA_PATH, metadata.model_dump(mode="json"))
    return folder


def write_bundle_version(
    folder: Path, thresholds: Mapping[str, float], note: str, version: str | None = None
) -> BundleMetadata:
    """A new version of a bundle with new operating thresholds (same weights); the metadata it
    replaces is kept as ``configs/history/metadata-<old version>.json``."""
    bundle = read_bundle(folder)
    old = bundle.metadata
    unknown = sorted(set(thresholds) - {spec.name for spec in old.labels})
    if unknown:
        raise ValueError(f"{folder}: no such labels: {', '.join(unknown)}")
    history = folder / HISTORY_DIR / f"metadata-{old.version}.json"
    history.parent.mkdir(parents=True, exist_ok=True)
    history.write_text((folder / METADATA_PATH).read_text())
    labels = [
        spec.model_copy(update={"threshold": float(thresholds[spec.name])})
        if spec.name in thresholds
        else spec
        for spec in old.labels
    ]
    new = old.model_copy(
        update={
            "version": version or next_version(old.version),
            "labels": labels,
            "description": f"{old.description.split(' | calibrated:')[0]} | calibrated: {note}",
        }
    )
    _write_json_atomically(folder / METADATA_PATH, new.model_dump(mode="json"))
    return new
