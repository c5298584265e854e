"""pynetdicom: chunked C-STORE send and receive, and sockets closed even when shutdown fails.

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from cxr_node.compat.versions import _REPLACED, pynetdicom_supported

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


def enable_chunked_store_receive() -> None:
    """Receive C-STORE data sets as Part 10 files, never whole in memory.

    ``pynetdicom._config`` is private by name but is pynetdicom's documented configuration
    module ("Configuration Options (pynetdicom._config)", STORE_RECV_CHUNKED_DATASET, added in
    2.0): the public API, so no version guard. The file is made by ``NamedTemporaryFile`` in
    the default temporary folder (see :mod:`cxr_node.dicom.receive`).
    """
    from pynetdicom import _config

    if not hasattr(_config, "STORE_RECV_CHUNKED_DATASET"):
        raise RuntimeError("this pynetdicom has no STORE_RECV_CHUNKED_DATASET option")
    _config.STORE_RECV_CHUNKED_DATASET = True


def enable_chunked_store_send() -> None:
    """Send a Part 10 file given by path as its bytes, without decoding it
    (``pynetdicom._config.STORE_SEND_CHUNKED_DATASET``, documented like the receive option).
    Without the option pynetdicom reads the file and sends the decoded data set: still correct.
    """
    from pynetdicom import _config

    if hasattr(_config, "STORE_SEND_CHUNKED_DATASET"):
        _config.STORE_SEND_CHUNKED_DATASET = True


def install_pynetdicom_socket_close_fix() -> bool:
    """Make ``AssociationSocket`` close its descriptor even when ``shutdown()`` fails.

    Why: pynetdicom 3.0's ``AssociationSocket._shutdown_socket`` calls ``shutdown()`` then
    ``close()`` in one ``try``; ``shutdown()`` raises on a socket that never connected (a
    refused connection, a failed TLS handshake) or whose peer is gone, so ``close()`` is
    skipped and the descriptor waits for the garbage collector (a ResourceWarning; under load,
    descriptors run out). Upstream: pydicom/pynetdicom#979 (sockets left open after an abort),
    fixed in part by pynetdicom#999, which left ``_shutdown_socket`` as it was in 3.0.4.
    Fallback: pynetdicom's own method. Idempotent; returns whether the fix is in place.
    """
    if not pynetdicom_supported():
        return False
    from pynetdicom.transport import AssociationSocket

    current = AssociationSocket.__dict__.get("_shutdown_socket")
    if current is _shutdown_and_close:
        return True
    if current is None:
        return False
    _REPLACED["pynetdicom AssociationSocket._shutdown_socket"] = current
    AssociationSocket._shutdown_socket = _shutdown_and_close  # type: ignore[method-assign]
    return True


def _shutdown_and_close(self: Any) -> None:
    """Shut the socket down if it can be, and close it in every case."""
    sock = self.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
