"""Workarounds that reach into private parts of pydicom, highdicom, pynetdicom and kombu.

Every read or write of another library's private attributes, methods or modules in
``cxr_node`` and ``workers`` is in this package and nowhere else, one module per concern:
``versions`` (the release series each workaround was written for, and what was replaced),
``fast_objects`` (pydicom and highdicom: the Part 10 writer's view, deep copies, SR documents),
``pynetdicom_socket`` (chunked C-STORE, sockets closed), ``kombu_transport`` (the embedded
queue's transport, the Redis reconnect guard), ``dimse_guards`` (hostile DIMSE requests) and
``front_door`` (limits on what a peer may send). Each workaround says why it
exists and what upstream says; each runs only on the release series it was written and tested
against (``SUPPORTED_*_VERSIONS``: the series installed and pinned today) and, on any other
version, falls back to the library's public API: slower, or without the fix, but correct.
``tests/unit/test_compat.py`` runs both paths of each and checks that they agree.

Imports: pydicom only at module level. The DICOM edge imports this module and installs neither
highdicom nor torch; highdicom, pynetdicom and kombu are imported where they are used.

What is *not* here, because a public hook does the job: the receive folder of chunked C-STORE
(``tempfile.tempdir``, :mod:`cxr_node.dicom.receive`) and the calling-AE check (an
``EVT_REQUESTED`` handler, :mod:`cxr_node.dicom.scp`).
"""

from __future__ import annotations

from cxr_node.compat.dimse_guards import (
    install_dimse_request_guards,
)
from cxr_node.compat.fast_objects import (
    build_sr,
    clone,
    clone_element,
    fast_copies,
    fast_part10_writer,
    sr_templates,
    written_character_set,
)
from cxr_node.compat.front_door import (
    ChunkedReceiveWatch,
    FrontDoorLimits,
    discard_partial_receives,
    install_front_door_limits,
)
from cxr_node.compat.kombu_transport import (
    embedded_filesystem_transport,
    install_kombu_redis_reconnect_guard,
)
from cxr_node.compat.pynetdicom_socket import (
    enable_chunked_store_receive,
    enable_chunked_store_send,
    install_pynetdicom_socket_close_fix,
)
from cxr_node.compat.versions import (
    SUPPORTED_HIGHDICOM_VERSIONS,
    SUPPORTED_KOMBU_VERSIONS,
    SUPPORTED_PYDICOM_VERSIONS,
    SUPPORTED_PYNETDICOM_VERSIONS,
    highdicom_supported,
    installed_version,
    kombu_supported,
    pydicom_supported,
    pynetdicom_supported,
)

__all__ = [
    "SUPPORTED_HIGHDICOM_VERSIONS",
    "SUPPORTED_KOMBU_VERSIONS",
    "SUPPORTED_PYDICOM_VERSIONS",
    "SUPPORTED_PYNETDICOM_VERSIONS",
    "ChunkedReceiveWatch",
    "FrontDoorLimits",
    "build_sr",
    "clone",
    "clone_element",
    "discard_partial_receives",
    "embedded_filesystem_transport",
    "enable_chunked_store_receive",
    "enable_chunked_store_send",
    "fast_copies",
    "fast_part10_writer",
    "highdicom_supported",
    "install_dimse_request_guards",
    "install_front_door_limits",
    "install_kombu_redis_reconnect_guard",
    "install_pynetdicom_socket_close_fix",
    "installed_version",
    "kombu_supported",
    "pydicom_supported",
    "pynetdicom_supported",
    "sr_templates",
    "written_character_set",
]
