"""Where the pictures of an analysed image live, shared by the worker that writes them
(``workers.previews``) and the web app that serves them: ``<spool>/<study>/previews/<image>/``
holding ``image.png``, ``heatmap-<label>.png`` per explained finding and ``geometry.json``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxr_node.spool import safe_key

IMAGE = "image.png"
GEOMETRY = "geometry.json"


def label_slug(label: str) -> str:
    """A file-name-safe form of a finding's label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-").lower() or "finding"


def heatmap_name(label: str) -> str:
    """The file of a finding's heatmap."""
    return f"heatmap-{label_slug(label)}.png"


def picture_folder(spool_root: Path, study_key: str, sop_instance_uid: str) -> Path:
    """An image's pictures."""
    return spool_root / study_key / "previews" / safe_key(sop_instance_uid)


def geometry(folder: Path) -> dict[str, int]:
    """The analysed image's rows and columns (the frame of the findings' regions), or {}."""
    try:
        data = json.loads((folder / GEOMETRY).read_text())
        return {"rows": int(data["rows"]), "columns": int(data["columns"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def heatmap_labels(folder: Path, labels: list[str]) -> list[str]:
    """The findings (of ``labels``) that have a heatmap in ``folder``."""
    return [label for label in labels if (folder / heatmap_name(label)).is_file()]
