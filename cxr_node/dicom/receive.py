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

import tempfile
from pathlib import Path

from cxr_node import compat


def enable_chunked_receive(receive_folder: Path) -> None:
    """Switch this process to chunked C-STORE receive into ``receive_folder``.

    Process-wide: every temporary file this process makes without naming a folder goes there
    too (the spool's housekeeping removes those left for an hour).
    """
    compat.enable_chunked_store_receive()
    tempfile.tempdir = str(receive_folder)
