"""C-ECHO and C-STORE handlers: validate the header, spool, record, return a status.

Thin and non-blocking (no pixel decoding, no inference inside an association). A handler never
raises: pynetdicom would answer 0xC211 and the sender would learn nothing (PS3.4 Annex B).
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from cxr_node import intake
from cxr_node.dicom import status
from cxr_node.ledger import Ledger
from cxr_node.logs import describe_exception
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
    ) -> None:
        self._spool = spool
        self._ledger = ledger
        self._router = router
        self._min_free_bytes = min_free_bytes
        self._max_instance_bytes = max_instance_bytes
        self._rules = rules

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
            log.error("unexpected %s while storing from %s", describe_exception(exc), calling_ae)
            return status.PROCESSING_FAILURE

    def _store(self, event: Any, calling_ae: str) -> int:
        try:
            dataset: Dataset = event.dataset
            dataset.file_meta = event.file_meta
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
        size = len(event.request.DataSet.getvalue())
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
        digest = hashlib.sha256(event.request.DataSet.getvalue()).hexdigest()
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
        size = self._spool.write_atomically(path, [_encode_as_received(event)])
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
        )
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


def _peer_address(event: Any) -> str | None:
    try:
        return str(event.assoc.requestor.address)
    except AttributeError:
        return None


def _encode_as_received(event: Any) -> bytes:
    """Part 10 bytes: preamble, file meta, and the data set as it arrived (PS3.10 7.1)."""
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
    buffer.write(event.request.DataSet.getvalue())
    return buffer.getvalue()
