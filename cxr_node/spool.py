"""The durable spool: every received instance is on disk, fsynced, before Success goes back.

Paths are built from sanitised UIDs (PS3.5 9.1: digits and dots, at most 64 characters), never
from raw header values; anything else is replaced by a hash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

# Tolerant of leading zeros that real devices write, strict about everything else.
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_key(uid: str) -> str:
    """A file-name-safe key for a UID: the UID itself when well-formed, else a hash of it."""
    uid = uid.strip().rstrip("\x00")
    if len(uid) <= 64 and _UID_PATTERN.match(uid):
        return uid
    return "h-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def log_ref(uid: str) -> str:
    """A short, non-reversible reference to a UID for logs (no patient data in logs)."""
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class Spool:
    """Files under one root: ``<study>/<sop>.dcm`` for inputs, ``<study>/results/`` for outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance of a study lives (absolute)."""
        return self.root / safe_key(study_uid) / f"{safe_key(sop_instance_uid)}.dcm"

    def result_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        """Where a result object of a study lives (absolute)."""
        return self.root / safe_key(study_uid) / "results" / f"{safe_key(sop_instance_uid)}.dcm"

    def relative(self, path: Path) -> str:
        """A spool-relative path, as jobs carry it (a worker may mount the spool elsewhere)."""
        return path.resolve().relative_to(self.root).as_posix()

    def resolve(self, relative_path: str) -> Path:
        """Turn a spool-relative path back into an absolute one, refusing escapes from the root."""
        candidate = (self.root / relative_path).resolve()
        if not candidate.is_relative_to(self.root):
            raise ValueError("path escapes the spool")
        return candidate

    def write_atomically(self, destination: Path, chunks: list[bytes]) -> int:
        """Write to a temp file, fsync it, rename into place and fsync the folder; return size."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        size = 0
        try:
            with os.fdopen(handle, "wb") as stream:
                for chunk in chunks:
                    stream.write(chunk)
                    size += len(chunk)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, destination)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_directory(destination.parent)
        return size

    @property
    def receive_folder(self) -> Path:
        """Where files being received or written live until renamed into place (same file
        system as the spool, so the rename is atomic)."""
        return self._tmp

    def adopt(self, received: Path, destination: Path) -> int:
        """Make a file received in :attr:`receive_folder` durable at ``destination``: fsync it,
        rename it into place and fsync the folder; return its size. A file on another file
        system is copied instead (the original stays where it was)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(received, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            size = os.fstat(descriptor).st_size
        finally:
            os.close(descriptor)
        try:
            os.replace(received, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with received.open("rb") as stream:
                return self.write_atomically(destination, [stream.read()])
        _fsync_directory(destination.parent)
        return size

    def remove_stale_partials(self, older_than_seconds: float) -> int:
        """Delete temp files left by interrupted receives or writes; return how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for leftover in self._tmp.iterdir():
            try:
                if leftover.is_file() and leftover.stat().st_mtime < cutoff:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
        return removed

    def free_bytes(self) -> int:
        """Free space on the spool's file system."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize


def _fsync_directory(folder: Path) -> None:
    """Make a rename durable (POSIX: the directory entry needs its own fsync)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
