"""pynetdicom 3.0: limits at the front door (request sizes, slow and partial transfers).

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable
from time import monotonic
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from cxr_node.compat.versions import _REPLACED, pynetdicom_supported

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


#
# pynetdicom 3.0 reads each PDU whole into memory, as long as its header says, with a blocking
# recv and no deadline (``DULServiceProvider._read_pdu_data``), and the acceptor's thread waits
# the whole ACSE timeout for an A-ASSOCIATE-RQ even after the peer has closed the connection
# (``Association.run_reactor`` -> ``receive_pdu(wait=True, timeout=acse_timeout)``), while its
# thread counts against ``maximum_associations``. So: a bare TCP connect-and-close held a slot
# for the ACSE timeout; a PDU header and then a byte every 20 s held one for ever (the ARTIM
# timer is only checked between PDUs); a P-DATA-TF declaring 256 MB was read whole although
# ``max_pdu`` is 256 KB; a 64 MB A-ASSOCIATE-RQ was read and decoded before the calling AE was
# checked. No public hook reaches these. The guards below (pynetdicom 3.0.x only):
#
# 1. ``_read_pdu_data``: a PDU is read only if its declared length is within its limit (P-DATA-TF:
#    our Maximum Length Received, PS3.8 D.1; any other: ``max_association_request_bytes``),
#    else it is treated as an invalid PDU (Evt19: A-ABORT, PS3.8 9.2.3); the A-ASSOCIATE-RQ must
#    arrive whole before the ARTIM timer runs out (PS3.8 9.1.5; the SCP sets ARTIM with its
#    ACSE timeout, ``association_request_timeout_seconds``); later PDUs must keep coming (each
#    read waits at most the network timeout); in Sta13 (association over, awaiting close) what
#    arrives is discarded, not parsed (PS3.8 9.2.3 AA-6, AA-7).
# 2. ``receive_pdu`` for an acceptor still waiting for its A-ASSOCIATE-RQ: waits in short slices
#    and gives up as soon as the connection is gone; at most ``max_pending`` connections wait
#    at once (newer ones are closed at once). Such connections take no association slot:
#    :class:`cxr_node.dicom.scp.ListeningAE` counts only associations whose request arrived.
# 3. Chunked C-STORE receive: a watcher (:class:`ChunkedReceiveWatch`) is told of each partial
#    file as it grows; when it says stop, the rest of the data set is discarded instead of
#    written (the handler then answers from the watcher's reason), and files of messages that
#    never completed are handed to it when the association ends.

_READ_SLICE_SECONDS = 0.05
_DRAIN_BYTES = 65536


class FrontDoorLimits:
    """What the guards enforce, per listening AE (set by :func:`install_front_door_limits`)."""

    def __init__(self, max_request_bytes: int, max_pending: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    def enter_pending(self) -> bool:
        """Count one more connection waiting for its A-ASSOCIATE-RQ; False when full."""
        with self._lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
            return True

    def leave_pending(self) -> None:
        with self._lock:
            self._pending -= 1


class ChunkedReceiveWatch:
    """Told about C-STORE data sets as pynetdicom writes them to partial files (see above)."""

    def grew(self, association: Any, path: str, size: int) -> str | None:
        """The partial file at ``path`` now holds ``size`` bytes; a reason to stop keeping the
        rest of the data set, or None."""
        return None

    def abandoned(self, path: str) -> None:
        """The association ended before the data set at ``path`` was complete."""


_LIMITS: weakref.WeakKeyDictionary[Any, FrontDoorLimits] = weakref.WeakKeyDictionary()
_WATCHES: weakref.WeakKeyDictionary[Any, ChunkedReceiveWatch] = weakref.WeakKeyDictionary()
_PARTIAL: dict[int, dict[int, Any]] = {}
"""id(association) -> id(message) -> message, for C-STORE data sets not yet complete."""
_PARTIAL_LOCK = threading.Lock()


def install_front_door_limits(
    ae: Any,
    max_request_bytes: int,
    max_pending: int,
    watch: ChunkedReceiveWatch | None = None,
) -> bool:
    """Apply guards 1-3 to associations accepted by ``ae``; False (pynetdicom's own behaviour)
    on another pynetdicom than 3.0.x or when the internals they replace are missing."""
    if not pynetdicom_supported():
        return False
    # at call time: dimse_guards uses this module's receive watch and peer names
    from cxr_node.compat.dimse_guards import install_dimse_request_guards

    _LIMITS[ae] = FrontDoorLimits(max_request_bytes, max_pending)
    if watch is not None:
        _WATCHES[ae] = watch
    from pynetdicom.dul import DULServiceProvider

    reader = DULServiceProvider.__dict__.get("_read_pdu_data")
    receiver = DULServiceProvider.__dict__.get("receive_pdu")
    if reader is None or receiver is None or not hasattr(DULServiceProvider, "_decode_pdu"):
        log.warning("pynetdicom internals changed: the front door limits are not in place")
        return False
    if getattr(reader, "_cxr_guard", False):
        return install_dimse_request_guards()
    _REPLACED["pynetdicom DULServiceProvider._read_pdu_data"] = reader
    _REPLACED["pynetdicom DULServiceProvider.receive_pdu"] = receiver

    @functools.wraps(receiver)
    def receive_pdu(self: Any, wait: bool = False, timeout: float | None = None) -> Any:
        association = self.assoc
        limits = _LIMITS.get(association.ae)
        if (
            limits is None
            or not wait
            or not association.is_acceptor
            or association.requestor.primitive is not None
        ):
            return receiver(self, wait, timeout)
        return _await_association_request(self, receiver, limits, timeout)

    _read_pdu_data_guarded._cxr_guard = True  # type: ignore[attr-defined]
    DULServiceProvider._read_pdu_data = _read_pdu_data_guarded  # type: ignore[method-assign]
    DULServiceProvider.receive_pdu = receive_pdu  # type: ignore[method-assign]
    return install_dimse_request_guards()


def _await_association_request(
    dul: Any, receiver: Callable[..., Any], limits: FrontDoorLimits, timeout: float | None
) -> Any:
    """Guard 2: the acceptor's wait for the A-ASSOCIATE-RQ. When it gives up, the ARTIM event
    (Evt18: close the transport, Sta1) lets pynetdicom's ``kill()`` end the threads at once."""
    if not limits.enter_pending():
        log.warning("too many connections waiting for an association request: one closed")
        dul.event_queue.put("Evt18")
        return None
    deadline = None if timeout is None else monotonic() + timeout
    try:
        while True:
            primitive = receiver(dul, True, _READ_SLICE_SECONDS)
            if primitive is not None:
                return primitive
            if not dul.is_alive() or _connection_gone(dul):
                return None  # free the thread at once
            if deadline is not None and monotonic() >= deadline:
                dul.event_queue.put("Evt18")
                return None
    finally:
        limits.leave_pending()


def _connection_gone(dul: Any) -> bool:
    """The DUL is idle again (Sta1) and its socket closed: the peer went before associating."""
    if dul.state_machine.current_state != "Sta1":
        return False
    raw = getattr(dul.socket, "socket", None)
    try:
        return raw is None or raw.fileno() == -1
    except (OSError, ValueError):
        return True


def _read_pdu_data_guarded(self: Any) -> None:
    """Guard 1: ``DULServiceProvider._read_pdu_data`` with limits and deadlines."""
    from cxr_node.dicom.handlers import for_log

    association = self.assoc
    limits = _LIMITS.get(association.ae)
    if limits is None:  # an AE without limits (a client, or installed on another version)
        return _REPLACED["pynetdicom DULServiceProvider._read_pdu_data"](self)
    sock = self.socket
    state = self.state_machine.current_state
    if state == "Sta13":  # nothing more to act on: discard until the peer closes
        if not _read_some(sock):
            self.event_queue.put("Evt17")
        return
    if state in ("Sta1", "Sta2"):  # the whole A-ASSOCIATE-RQ must come before ARTIM runs out
        # (Sta1: data may be read before the connection event itself is processed)
        deadline: float | None = monotonic() + max(self.artim_timer.remaining, 0.0)
        per_read = None
    else:  # each PDU within the network timeout, and no read waiting longer
        per_read = association.network_timeout
        deadline = None if per_read is None else monotonic() + per_read
    header = _read_exactly(sock, 6, deadline, per_read)
    if header is None or len(header) < 6:
        self.event_queue.put("Evt17")  # closed, or too slow: the transport is dropped
        return
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        log.warning("unknown PDU type 0x%02X from %s: aborted", pdu_type, _peer(association))
        self.event_queue.put("Evt19")
        return
    limit = None
    if pdu_type == 0x04:
        local = association.acceptor if association.is_acceptor else association.requestor
        limit = local.maximum_length or None  # 0: no limit (PS3.8 D.1)
    else:
        limit = limits.max_request_bytes
    if limit is not None and pdu_length > limit:
        log.warning(
            "PDU of type 0x%02X declaring %d bytes (limit %d) from %s: aborted",
            pdu_type,
            pdu_length,
            limit,
            for_log(_peer(association)),
        )
        self.event_queue.put("Evt19")
        return
    body = _read_exactly(sock, pdu_length, deadline, per_read)
    if body is None or len(body) != pdu_length:
        log.warning(
            "PDU from %s incomplete (%s): connection dropped",
            for_log(_peer(association)),
            "too slow" if body is None else "closed",
        )
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
        if pdu_type == 0x01:
            pdu.to_primitive()  # what AE-6 does: its errors (an even context ID) kill the DUL
    except Exception as exc:
        log.warning("undecodable PDU from %s (%s)", for_log(_peer(association)), type(exc).__name__)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _peer(association: Any) -> str:
    try:
        return str(association.requestor.address or "")
    except Exception:
        return ""


def _read_some(sock: Any) -> bool:
    """Read and discard what is there; False when the connection is closed."""
    raw = getattr(sock, "socket", None)
    if raw is None:
        return False
    try:
        return bool(raw.recv(_DRAIN_BYTES))
    except (OSError, ValueError):
        return False


def _read_exactly(
    sock: Any, count: int, deadline: float | None, per_read: float | None
) -> bytearray | None:
    """``count`` bytes, or fewer when the peer closes; None when the deadline passes or a read
    waits longer than ``per_read``. The socket's own timeout is restored afterwards."""
    raw = getattr(sock, "socket", None)
    if raw is None:
        return bytearray()
    data = bytearray()
    previous = raw.gettimeout()
    try:
        while len(data) < count:
            wait = per_read
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    return None
                wait = left if wait is None else min(wait, left)
            raw.settimeout(wait)
            try:
                chunk = raw.recv(min(count - len(data), _DRAIN_BYTES))
            except TimeoutError:
                return None
            except (OSError, ValueError):
                return data
            if not chunk:
                return data
            data += chunk
        return data
    finally:
        with contextlib.suppress(OSError, ValueError):
            raw.settimeout(previous)


class _DiscardedDataSet:
    """Stands in for a chunked receive's partial file once its watcher said stop: the rest of
    the data set is read from the network and dropped (pynetdicom writes, flushes, closes it
    and unlinks it by ``name``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file = self

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _watch_chunked_receive(message: Any, association: Any, complete: bool) -> None:
    """Guard 3, after pynetdicom decoded a P-DATA into ``message``."""
    partial = getattr(message, "_data_set_file", None)
    if partial is None or association is None:
        return
    key = id(association)
    with _PARTIAL_LOCK:
        messages = _PARTIAL.setdefault(key, {})
        if complete:
            messages.pop(id(message), None)
            if not messages:
                del _PARTIAL[key]
        else:
            messages[id(message)] = message
    watch = _WATCHES.get(association.ae)
    if watch is None or isinstance(partial, _DiscardedDataSet):
        return
    path = str(partial.name)
    reason = watch.grew(association, path, partial.tell())
    if reason is not None:
        partial.close()
        with open(path, "r+b") as stream:  # keep the File Meta, drop what came of the data set
            stream.truncate(_file_meta_end(path))
        message._data_set_file = _DiscardedDataSet(path)


def _file_meta_end(path: str) -> int:
    """Where the data set starts in a Part 10 file pynetdicom wrote (PS3.10 7.1)."""
    with open(path, "rb") as stream:
        stream.seek(128 + 4 + 8)
        group_length = int.from_bytes(stream.read(4), "little")
    return 128 + 4 + 12 + group_length


def discard_partial_receives(event: Any) -> None:
    """``evt.EVT_ABORTED`` / ``evt.EVT_CONN_CLOSE`` / ``evt.EVT_RELEASED``: close and hand to
    the watcher the partial files of C-STORE data sets the association never completed."""
    association = event.assoc
    with _PARTIAL_LOCK:
        messages = _PARTIAL.pop(id(association), {})
    watch = _WATCHES.get(association.ae)
    for message in messages.values():
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            continue
        with contextlib.suppress(OSError):
            partial.close()
        path = str(partial.name)
        if watch is not None:
            watch.abandoned(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
