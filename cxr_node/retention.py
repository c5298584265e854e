"""Spool retention: delete the files of finished studies after ``spool_retention_hours``, and
the oldest finished ones first whenever free space falls below twice ``spool_min_free_bytes``.

Only finished studies are touched (delivered, failed for good, not eligible, or analysed
without destinations, with nothing pending: see :mod:`cxr_node.ledger.retention`); the ledger
keeps their rows and marks them purged. ``cxr-node purge [--dry-run]`` does it by hand; ``serve``
does it every minute.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cxr_node.ledger import Ledger, PurgeCandidate
from cxr_node.settings import Settings
from cxr_node.spool import Spool, log_ref

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS = 60.0


@dataclass
class PurgedStudy:
    """One study whose files went (or would go, in a dry run)."""

    study_uid: str
    finished_at: float
    files: int
    bytes: int
    why: str


@dataclass
class PurgeReport:
    """What a purge did (or, dry, would do)."""

    studies: list[PurgedStudy] = field(default_factory=list)
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        """Bytes freed (or that would be)."""
        return sum(s.bytes for s in self.studies)


class Purger:
    """Applies the retention policy to one spool and its ledger."""

    def __init__(self, settings: Settings, ledger: Ledger, spool: Spool) -> None:
        self._ledger = ledger
        self._spool = spool
        self._retention_seconds = settings.spool_retention_hours * 3600.0
        self._watermark = 2 * settings.spool_min_free_bytes
        self._notices_expected = settings.not_analysed_report

    def purge(self, *, dry_run: bool = False) -> PurgeReport:
        """Purge what the policy says may go, oldest first; log each study (without patient
        data) and return the report."""
        report = PurgeReport(dry_run=dry_run)
        done: set[str] = set()
        if self._retention_seconds > 0:
            expired = self._ledger.purge_candidates(
                finished_before=self._ledger.now() - self._retention_seconds,
                notices_expected=self._notices_expected,
            )
            for candidate in expired:
                self._purge_one(candidate, "retention", report, dry_run)
                done.add(candidate.study_key)
        shortfall = self._watermark - self._spool.free_bytes()
        if shortfall > 0:
            freed = 0
            for candidate in self._ledger.purge_candidates(
                finished_before=None, notices_expected=self._notices_expected
            ):
                if freed >= shortfall:
                    break
                if candidate.study_key in done:
                    continue
                freed += self._purge_one(candidate, "free space", report, dry_run)
        return report

    def _purge_one(
        self, candidate: PurgeCandidate, why: str, report: PurgeReport, dry_run: bool
    ) -> int:
        files = [self._spool.resolve(path) for path in candidate.paths]
        present = [(f, f.stat().st_size) for f in files if f.is_file()]
        size = sum(s for _, s in present)
        if not dry_run:
            if not self._ledger.still_finished(candidate.study_key, candidate.finished_at):
                return 0  # something new arrived for it meanwhile
            for path, _ in present:
                path.unlink(missing_ok=True)
            pictures = self._spool.root / candidate.study_key / "previews"
            if pictures.is_dir():  # the web app's pictures of its images (workers.previews)
                shutil.rmtree(pictures, ignore_errors=True)
            _remove_empty_folders({f.parent for f in files}, self._spool.root)
            if not self._ledger.mark_purged(candidate.study_key, candidate.finished_at):
                log.warning("study %s changed while purging", log_ref(candidate.study_key))
            log.info(
                "purged study %s (%s): %d file(s), %d bytes",
                log_ref(candidate.study_key),
                why,
                len(present),
                size,
            )
        report.studies.append(
            PurgedStudy(candidate.study_uid, candidate.finished_at, len(present), size, why)
        )
        return size


def _remove_empty_folders(folders: set[Path], root: Path) -> None:
    """Remove the study's folders that are now empty (``results/`` first, then the study)."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        for candidate in (folder, folder.parent):
            if candidate == root or not candidate.is_relative_to(root):
                continue
            with contextlib.suppress(OSError):  # not empty (a new image arrived), or gone
                candidate.rmdir()
