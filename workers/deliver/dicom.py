"""Delivery of result objects by C-STORE SCU (PS3.4 Annex B), reusing associations.

Failures are classified as :mod:`workers.deliver.policy` says, so the caller's policy is simple:

- :class:`DestinationUnreachable` (refused connection, timeout, abort, transient association
  rejection, 0xA7xx): the destination as a whole is retried with backoff;
- :class:`AssociationRefused` (association rejected permanently, PS3.8 9.3.4): the destination
  refuses us for good; what was due to it fails with the reason;
- :class:`DeliveryRejected` (0xA9xx, 0xCxxx, a SOP class it does not accept): that study's
  delivery to it fails with the reason; the association stays usable for the next study.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from cxr_node import compat
from cxr_node.destinations import Destination
from cxr_node.dicom import status
from cxr_node.dicom.contexts import RESULT_SOP_CLASSES
from workers.deliver.policy import AssociationRefused, DeliveryRejected, DestinationUnreachable

log = logging.getLogger(__name__)

OFFERED_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
"""Our results are Explicit VR Little Endian; pynetdicom re-encodes for an Implicit-only peer."""

_WARNING_STATUSES = {0xB000, 0xB007, 0xB006, 0x0107, 0x0116}
_PERMANENT_REJECTION = 0x01

# A refused or failed association must not leave its socket to the garbage collector.
compat.install_pynetdicom_socket_close_fix()


def _destination_key(destination: Destination) -> str:
    return destination.model_dump_json()


@dataclass
class _Pooled:
    association: Association
    key: str
    last_used: float


class AssociationPool:
    """Open associations per destination, reused while they are idle less than ``idle_seconds``.

    One caller at a time per destination (the ledger's destination lease sees to that); the
    pool's own lock only guards its dictionary. :meth:`close_idle` runs from a reaper thread.
    """

    def __init__(self, calling_ae: str, timeout: float, idle_seconds: float) -> None:
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.idle_seconds = idle_seconds
        self._open: dict[str, _Pooled] = {}
        self._lock = threading.Lock()
        self.opened = 0
        """How many associations were opened (for tests and benchmarks)."""

    def acquire(self, destination: Destination) -> tuple[Association, bool]:
        """An established association to ``destination`` and whether it was reused."""
        key = _destination_key(destination)
        with self._lock:
            pooled = self._open.pop(destination.name, None)
        if pooled is not None:
            if pooled.key == key and pooled.association.is_established:
                return pooled.association, True
            _release(pooled.association)
        association = self._associate(destination)
        self.opened += 1
        return association, False

    def give_back(self, destination: Destination, association: Association) -> None:
        """Keep a healthy association for the next study (or release it when reuse is off)."""
        if not association.is_established:
            return
        if self.idle_seconds <= 0:
            _release(association)
            return
        with self._lock:
            previous = self._open.pop(destination.name, None)
            self._open[destination.name] = _Pooled(
                association, _destination_key(destination), time.monotonic()
            )
        if previous is not None and previous.association is not association:
            _release(previous.association)

    def discard(self, association: Association) -> None:
        """Drop a broken association."""
        if association.is_established:
            association.abort()

    def close_idle(self) -> int:
        """Release associations idle for longer than ``idle_seconds``; returns how many."""
        cutoff = time.monotonic() - self.idle_seconds
        with self._lock:
            stale = [name for name, p in self._open.items() if p.last_used <= cutoff]
            closing = [self._open.pop(name) for name in stale]
        for pooled in closing:
            _release(pooled.association)
        return len(closing)

    def close_all(self) -> None:
        """Release every association (worker shutdown)."""
        with self._lock:
            closing = list(self._open.values())
            self._open.clear()
        for pooled in closing:
            _release(pooled.association)

    def _associate(self, destination: Destination) -> Association:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = max(self.timeout, self.idle_seconds + self.timeout)  # pooled idle
        ae.connection_timeout = self.timeout
        for sop_class in RESULT_SOP_CLASSES:
            # One context per transfer syntax (as DCMTK's storescu does), so that a peer that
            # takes both lets us send our Explicit VR files as they are (PS3.8 9.3.2.2).
            for transfer_syntax in OFFERED_TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class, [transfer_syntax])
        tls_args = None
        if destination.tls is not None:
            try:
                context = destination.tls.client_context()
            except (OSError, ValueError) as exc:
                raise DestinationUnreachable(
                    f"TLS settings of {destination.name} unusable ({type(exc).__name__})"
                ) from None
            # check_hostname in the context decides whether the name is checked; the host is
            # always passed (SNI; Python refuses an empty server_hostname)
            tls_args = (context, destination.host)
        association = ae.associate(
            destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args
        )
        if association.is_established:
            return association
        primitive = association.acceptor.primitive if association.is_rejected else None
        if primitive is not None:
            reason = primitive.result_str
            if primitive.result == _PERMANENT_REJECTION:
                raise AssociationRefused(f"association rejected permanently: {reason}")
            raise DestinationUnreachable(f"association rejected transiently: {reason}")
        what = "TLS handshake or connection" if destination.tls is not None else "connection"
        raise DestinationUnreachable(f"no association ({what} refused, aborted or timed out)")


def _release(association: Association) -> None:
    if association.is_established:
        association.release()


def store_files(
    association: Association,
    files: Iterable[Path],
    on_stored: Callable[[Path], None] | None = None,
) -> int:
    """C-STORE each Part 10 file the association accepts; return how many were stored.
    ``on_stored`` is called with each file the peer acknowledged (success or warning, PS3.4
    B.2.3) as soon as it did, before the next is sent.

    A file goes out as its bytes are on disk (pynetdicom's chunked send, no decoding and no
    re-encoding) when the peer accepted its transfer syntax; otherwise it is decoded and
    pynetdicom converts it to one the peer accepted (an Implicit-VR-only peer). Objects of a SOP
    class the destination did not accept are not sent: the others are, and then
    :class:`DeliveryRejected` names what was refused.
    """
    compat.enable_chunked_store_send()  # only affects sends of a path, as here
    accepted = {str(context.abstract_syntax) for context in association.accepted_contexts}
    refused: list[str] = []
    stored = 0
    for path in files:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        if sop_class not in accepted:
            refused.append(sop_class)
            continue
        try:
            answer = _send_c_store(association, path, sop_class, str(meta.TransferSyntaxUID))
        except RuntimeError:  # the association ended under us
            raise DestinationUnreachable("association lost before C-STORE") from None
        except ValueError:  # no accepted context fits the object's transfer syntax
            raise DeliveryRejected(f"no transfer syntax agreed for {UID(sop_class).name}") from None
        code = int(answer.Status) if "Status" in answer else None
        if code is None:
            raise DestinationUnreachable("no C-STORE response (timeout or abort)")
        if code == status.SUCCESS or code in _WARNING_STATUSES:
            stored += 1
            if on_stored is not None:
                on_stored(path)
            continue
        if status.is_retryable(code):
            raise DestinationUnreachable(f"destination answered 0x{code:04X} (out of resources)")
        raise DeliveryRejected(f"destination answered 0x{code:04X}")
    if refused:
        names = ", ".join(sorted({UID(uid).name for uid in refused}))
        raise DeliveryRejected(f"destination does not accept {names}; {stored} other(s) stored")
    return stored


def _send_c_store(
    association: Association, path: Path, sop_class: str, transfer_syntax: str
) -> Dataset:
    """Send the file as it is when its transfer syntax was accepted, else decoded."""
    as_is = any(
        str(context.abstract_syntax) == sop_class
        and str(context.transfer_syntax[0]) == transfer_syntax
        for context in association.accepted_contexts
    )
    return association.send_c_store(path if as_is else dcmread(path))


def send_study(
    pool: AssociationPool,
    destination: Destination,
    files: list[Path],
    on_stored: Callable[[Path], None] | None = None,
) -> int:
    """Send one study's result files to ``destination``, reusing a pooled association; return
    how many the peer acknowledged. ``on_stored`` as in :func:`store_files`.

    A reused association the peer has meanwhile closed is replaced once by a fresh one before
    the destination counts as unreachable; the fresh one sends only the files not yet stored.
    """
    acknowledged: list[Path] = []

    def stored_one(path: Path) -> None:
        acknowledged.append(path)
        if on_stored is not None:
            on_stored(path)

    for fresh_attempt in (False, True):
        association, reused = pool.acquire(destination)
        try:
            store_files(association, [f for f in files if f not in acknowledged], stored_one)
            stored = len(acknowledged)
        except DestinationUnreachable:
            pool.discard(association)
            if reused and not fresh_attempt:
                log.info("pooled association to %s went stale; opening a new one", destination.name)
                continue
            raise
        except DeliveryRejected:
            pool.give_back(destination, association)
            raise
        except BaseException:
            pool.discard(association)
            raise
        pool.give_back(destination, association)
        return stored
    raise AssertionError("unreachable")


def send_files(
    destination: Destination, files: list[Path], calling_ae: str, timeout: float = 30.0
) -> None:
    """Send every file to one destination over one new association, or raise why not."""
    pool = AssociationPool(calling_ae, timeout, idle_seconds=0.0)
    send_study(pool, destination, files)
    log.info("delivered %d objects to %s", len(files), destination.name)


__all__ = [
    "AssociationPool",
    "AssociationRefused",
    "DeliveryRejected",
    "DestinationUnreachable",
    "send_files",
    "send_study",
    "store_files",
]
