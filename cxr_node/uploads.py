"""Files uploaded for analysis outside the worklist (``POST /api/v1/analyze``, the seed
projects' Open API): kept in the spool's ``.uploads/<id>/`` (the volume serve and the workers
share), analysed by a worker, answered from ``result.json`` beside the pictures, and removed
after ``UPLOAD_KEPT_SECONDS``. They are never studies: no ledger row, no delivery."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from cxr_node.spool import Spool

UPLOAD_KEPT_SECONDS = 24 * 3600.0
SUFFIXES = {".dcm", ".png", ".jpg", ".jpeg"}
RESULT = "result.json"


class Uploads:
    """Uploaded files and their analyses."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self.root = spool.root / ".uploads"

    def folder(self, upload_id: str) -> Path:
        """An upload's folder (``upload_id`` is checked: hex only)."""
        if not upload_id or any(c not in "0123456789abcdef" for c in upload_id):
            raise ValueError("not an upload id")
        return self.root / upload_id

    def save(self, data: bytes, suffix: str) -> str:
        """Keep an uploaded file; its new id."""
        if suffix not in SUFFIXES:
            raise ValueError(f"not a DICOM, PNG or JPEG file name ({suffix or 'no suffix'})")
        upload_id = secrets.token_hex(12)
        folder = self.folder(upload_id)
        folder.mkdir(parents=True)
        self._spool.write_atomically(folder / f"upload{suffix}", [data])
        return upload_id

    def source(self, upload_id: str) -> Path | None:
        """The uploaded file, or None when it is gone."""
        folder = self.folder(upload_id)
        found = sorted(folder.glob("upload.*")) if folder.is_dir() else []
        return found[0] if found else None

    def write_result(self, upload_id: str, result: dict[str, Any]) -> None:
        """What the analysis said (written last, atomically: its presence means done)."""
        data = json.dumps(result).encode()
        self._spool.write_atomically(self.folder(upload_id) / RESULT, [data])

    def result(self, upload_id: str) -> dict[str, Any] | None:
        """The analysis, once written."""
        path = self.folder(upload_id) / RESULT
        try:
            loaded: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        return loaded

    def exists(self, upload_id: str) -> bool:
        """Whether the upload is still kept."""
        return self.folder(upload_id).is_dir()

    def sweep(self, kept_seconds: float = UPLOAD_KEPT_SECONDS) -> int:
        """Remove uploads older than ``kept_seconds``; how many went."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - kept_seconds
        removed = 0
        for folder in self.root.iterdir():
            try:
                old = folder.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue
            if old:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
