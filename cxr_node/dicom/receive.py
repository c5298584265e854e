"""Receive C-STORE data sets straight into the spool's folder, never whole in memory.

pynetdicom's chunked receive (its documented ``STORE_RECV_CHUNKED_DATASET`` option) writes each
P-DATA fragment (PS3.8 Annex E) of a C-STORE data set to a Part 10 temporary file, preamble and
File Meta Information first (PS3.10 7.1), and hands the handler its path. pynetdicom makes the
file with ``tempfile.NamedTemporaryFile`` and no folder, so it lands in Python's default
temporary folder, which the public ``tempfile.tempdir`` sets: the serve process has one spool,
so that folder is the spool's ``.tmp``, on the spool's file system, and the handler fsyncs the
file and renames it into place instead of copying 10 MB. (Should a pynetdicom ever pass a
folder of its own, ``Spool.adopt`` copies across file systems: slower, still correct.)
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_node import compat

log = logging.getLogger(__name__)


def enable_chunked_receive(receive_folder: Path) -> None:
    """Switch this process to chunked C-STORE receive into ``receive_folder``.

    Process-wide: every temporary file this process makes without naming a folder goes there
    too (the spool's housekeeping removes those left for an hour).
    """
    compat.enable_chunked_store_receive()
    tempfile.tempdir = str(receive_folder)


class ReceiveLimits(compat.ChunkedReceiveWatch):
    """``max_instance_bytes`` and the spool's free-space floor applied while a C-STORE data set
    arrives, not once it is complete; and partial files removed when their association ends.

    Over a limit, the rest of the data set is discarded as it arrives (memory and disk stay
    flat), and the C-STORE handler answers 0xA700 Out of Resources (PS3.4 B.2.3) from
    :meth:`refusal`: the sender learns why, nothing is acknowledged.
    """

    def __init__(
        self,
        max_instance_bytes: int | None,
        min_free_bytes: int,
        free_bytes: Callable[[], int],
    ) -> None:
        self._max_instance_bytes = max_instance_bytes
        self._min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def grew(self, association: Any, path: str, size: int) -> str | None:
        reason = None
        if self._max_instance_bytes is not None and size > self._max_instance_bytes:
            reason = f"instance over max_instance_bytes ({self._max_instance_bytes} bytes)"
        elif self._free_bytes() < self._min_free_bytes:
            reason = "spool free space under the floor"
        if reason is not None:
            with self._lock:
                self._refused[path] = reason
        return reason

    def refusal(self, path: Path) -> str | None:
        """Why the data set at ``path`` was not kept as it arrived (once), or None."""
        with self._lock:
            return self._refused.pop(str(path), None)

    def abandoned(self, path: str) -> None:
        with self._lock:
            self._refused.pop(path, None)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot remove a partial receive (%s)", type(exc).__name__)
            return
        log.info("partial data set of an association that ended removed")
