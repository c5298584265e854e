"""Receive C-STORE data sets straight into the spool's folder, never whole in memory.

pynetdicom's chunked receive (``_config.STORE_RECV_CHUNKED_DATASET``) writes each P-DATA
fragment (PS3.8 Annex E) of a C-STORE data set to a Part 10 temporary file, preamble and File
Meta Information first (PS3.10 7.1), and hands the handler its path. The file is made with
``tempfile.NamedTemporaryFile`` in ``pynetdicom.dimse_messages``; we give that call the
receiving AE's own folder (the spool's ``.tmp``) so that the handler can fsync the file and
rename it into place instead of copying 10 MB. The hook finds the AE through the DUL thread
that decodes the fragments (``DULServiceProvider.assoc``; pynetdicom 3.0, pinned in
``constraints.txt``); any other caller gets the default temporary folder.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages


def enable_chunked_receive() -> None:
    """Switch the process to chunked C-STORE receive with per-AE temporary folders."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    setattr(dimse_messages, "NamedTemporaryFile", _temporary_file_in_receive_folder)  # noqa: B010


def receive_folder_of_current_association() -> Path | None:
    """The ``receive_folder`` of the AE whose association this thread serves, if it has one."""
    association = getattr(threading.current_thread(), "assoc", None)
    folder = getattr(getattr(association, "ae", None), "receive_folder", None)
    return folder if isinstance(folder, Path) else None


def _temporary_file_in_receive_folder(*args: Any, **kwargs: Any) -> IO[bytes]:
    folder = receive_folder_of_current_association()
    if folder is not None and "dir" not in kwargs:
        kwargs["dir"] = folder
        kwargs.setdefault("prefix", "receiving-")
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # pynetdicom closes and unlinks it
