"""C-ECHO and C-STORE handlers: validate the header, spool, record, return a status.

Thin and non-blocking (no pixel decoding, no inference inside an association). A handler never
raises: pynetdicom would answer 0xC211 and the sender would learn nothing (PS3.4 Annex B).
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread

from cxr_node import intake
from cxr_node.dicom import status
from cxr_node.dicom.attributes import read_study_attributes
from cxr_node.dicom.sessions import SenderSessions
from cxr_node.ledger import Ledger
from cxr_node.logs import traceback_frames
from cxr_node.spool import Spool, log_ref, safe_key

log = logging.getLogger(__name__)

DestinationRouter = Callable[[str, str | None], list[str]]
"""Maps a calling AE title and peer address to the names of the destinations of its results."""


def handle_echo(event: Any) -> int:
    """C-ECHO (PS3.4 Annex A): we are alive."""
    return status.SUCCESS


class StoreHandler:
    """C-STORE SCP (PS3.4 Annex B): spool durably, record in the ledger, then answer."""

    def __init__(
        self,
        spool: Spool,
        ledger: Ledger,
        router: DestinationRouter,
        min_free_bytes: int,
        max_instance_bytes: int | None = None,
        rules: intake.EligibilityRules = intake.DEFAULT_RULES,
        sessions: SenderSessions | None = None,
    ) -> None:
        self._spool = spool
        self._ledger = ledger
        self._router = router
        self._min_free_bytes = min_free_bytes
        self._max_instance_bytes = max_instance_bytes
        self._rules = rules
        self.sessions = sessions
        """Told which study each association sent, when a release should end a study."""

    def __call__(self, event: Any) -> int:
        """Handle one ``evt.EVT_C_STORE``; always return a status, never raise."""
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            return self._store(event, calling_ae)
        except OSError as exc:  # spool full (ENOSPC, EDQUOT) or unwritable
            log.error(
                "cannot write to the spool (%s) while storing from %s: Out of Resources",
                errno.errorcode.get(exc.errno or 0, type(exc).__name__),
                calling_ae,
            )
            return status.OUT_OF_RESOURCES
        except Exception as exc:  # a handler must answer, whatever went wrong
            log.error(
                "unexpected error while storing from %s: %s", calling_ae, traceback_frames(exc)
            )
            return status.PROCESSING_FAILURE

    @property
    def receive_folder(self) -> Path:
        """Where pynetdicom writes data sets as they arrive (see :mod:`cxr_node.dicom.receive`)."""
        return self._spool.receive_folder

    def _store(self, event: Any, calling_ae: str) -> int:
        received = _received_file(event)
        try:
            # Large values (the pixels) stay on disk: the header and the presence of Pixel
            # Data are all the door needs; decoding is the worker's job.
            dataset = dcmread(received, defer_size=_DEFER_VALUES_OVER_BYTES)
            study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
            sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
        except Exception as exc:
            log.warning(
                "from %s: data set cannot be parsed (%s): Cannot Understand",
                calling_ae,
                type(exc).__name__,
            )
            return status.CANNOT_UNDERSTAND

        requested_class = str(event.request.AffectedSOPClassUID)
        problem = None
        if not study_uid or not sop_uid:
            problem = "Study or SOP Instance UID missing"
        elif sop_class != requested_class:
            problem = "SOP Class UID in the data set differs from the request"
        elif sop_uid != str(event.request.AffectedSOPInstanceUID):
            problem = "SOP Instance UID in the data set differs from the request"
        if problem:
            log.warning("from %s: %s: Data Set does not match SOP Class", calling_ae, problem)
            return status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS

        if self._spool.free_bytes() < self._min_free_bytes:
            log.error("spool free space under the floor: answering Out of Resources")
            return status.OUT_OF_RESOURCES
        size = received.stat().st_size
        if self._max_instance_bytes is not None and size > self._max_instance_bytes:
            log.warning(
                "from %s: instance of %d bytes over max_instance_bytes: Out of Resources",
                calling_ae,
                size,
            )
            return status.OUT_OF_RESOURCES

        try:
            decision = intake.evaluate(dataset, self._rules)
        except Exception as exc:  # malformed values in the header
            decision = intake.Decision(
                False, "BAD_HEADER", f"unreadable header ({type(exc).__name__})"
            )

        study_key = safe_key(study_uid)
        digest = data_set_digest(received)
        if self._ledger.instance_digest(study_key, sop_uid) == digest:
            log.info(
                "instance %s of study %s from %s already stored with the same content: "
                "not analysed again (cxr-node reprocess does that)",
                log_ref(sop_uid),
                log_ref(study_uid),
                calling_ae,
            )
            return status.SUCCESS
        path = self._spool.instance_path(study_uid, sop_uid)
        size = self._spool.adopt(received, path)
        is_new = self._ledger.record_instance(
            study_key=study_key,
            study_uid=study_uid,
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            path=self._spool.relative(path),
            size=size,
            eligible=decision.eligible,
            reason_code=decision.reason_code,
            reason=decision.reason,
            calling_ae=calling_ae,
            destinations=self._router(calling_ae, _peer_address(event)),
            sha256=digest,
            attributes=read_study_attributes(dataset),
        )
        if self.sessions is not None:
            self.sessions.saw(event.assoc, study_key)
        log.info(
            "stored instance %s of study %s from %s (%d bytes)%s%s",
            log_ref(sop_uid),
            log_ref(study_uid),
            calling_ae,
            size,
            "" if decision.eligible else f", not analysed: {decision.reason_code}",
            "" if is_new else ", already known",  # stored by a concurrent association
        )
        return status.SUCCESS


def data_set_digest(part10_file: Path) -> str:
    """SHA-256 of the data set of a Part 10 file, without its preamble and File Meta
    Information (PS3.10 7.1): the same content sent twice has the same digest."""
    with part10_file.open("rb") as stream:
        stream.seek(_PREAMBLE_AND_PREFIX)
        group_length = stream.read(_GROUP_LENGTH_ELEMENT)
        if group_length[:4] != b"\x02\x00\x00\x00" or len(group_length) != 12:
            raise ValueError("File Meta Information Group Length missing")
        stream.seek(_PREAMBLE_AND_PREFIX + _GROUP_LENGTH_ELEMENT + _uint32(group_length[8:]))
        return hashlib.file_digest(stream, "sha256").hexdigest()


_DEFER_VALUES_OVER_BYTES = 4096
_PREAMBLE_AND_PREFIX = 128 + 4
_GROUP_LENGTH_ELEMENT = 12
"""(0002,0000) UL, explicit VR little endian: tag 4, VR 2, length 2, value 4 (PS3.10 7.1)."""


def _uint32(little_endian: bytes) -> int:
    return int.from_bytes(little_endian, "little")


def _received_file(event: Any) -> Path:
    """The Part 10 file pynetdicom wrote the data set to (chunked receive is on: see
    :func:`cxr_node.dicom.receive.enable_chunked_receive`)."""
    return Path(event.dataset_path)


def _peer_address(event: Any) -> str | None:
    try:
        return str(event.assoc.requestor.address)
    except AttributeError:
        return None
