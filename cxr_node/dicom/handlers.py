"""C-ECHO and C-STORE handlers: validate the header, spool, record, return a status.

Thin and non-blocking (no pixel decoding, no inference inside an association). A handler never
raises: pynetdicom would answer 0xC211 and the sender would learn nothing (PS3.4 Annex B).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_node import intake
from cxr_node.dicom import status
from cxr_node.dicom.attributes import read_study_attributes
from cxr_node.dicom.header import Header, HeaderRefused, data_set_offset, open_header
from cxr_node.dicom.receive import ReceiveLimits
from cxr_node.dicom.sessions import SenderSessions
from cxr_node.ledger import Ledger
from cxr_node.ledger.rows import PatientConflict, StudyAttributes
from cxr_node.logs import traceback_frames
from cxr_node.metrics import count_store
from cxr_node.spool import Spool, log_ref, safe_key

log = logging.getLogger(__name__)

DestinationRouter = Callable[[str, str | None], list[str]]
"""Maps a calling AE title and peer address to the names of the destinations of its results."""


UID_MAX_LENGTH = 64
"""PS3.5 9.1: a UID is at most 64 characters."""

_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_LOG_VALUE_LIMIT = 64

REPLACED_UID_ROOT = "2.25.0."
"""Root of the stand-ins :mod:`cxr_node.dicom.scp` puts in a C-STORE command in place of a UID
pynetdicom cannot carry to the handler (missing, empty, too long, not a UID). 2.25 is the UUID
arc (PS3.5 B.2) and 0 the nil UUID, which no generator issues: no real UID starts so."""

_REPLACEMENT_REASONS = {
    "1": "missing",
    "2": "empty",
    "3": "over 64 characters",
    "4": "with control characters",
    "5": "not a UID",
}


def for_log(value: object) -> str:
    """Render an untrusted value (from the wire) for a log line: control characters escaped as
    ``repr`` does (no forged line, no NUL), cut at 64 characters with an ellipsis and the
    length (no 30 MB log lines)."""
    text = "" if value is None else str(value)
    shown = repr(text[:_LOG_VALUE_LIMIT])[1:-1]
    if len(text) > _LOG_VALUE_LIMIT:
        shown += f"\u2026 ({len(text)} characters)"
    return shown


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a valid UID (PS3.5 9.1), in words safe for a log; None when it is."""
    if value is None:
        return "missing"
    text = str(value)
    if text.startswith(REPLACED_UID_ROOT):
        code, _, length = text[len(REPLACED_UID_ROOT) :].partition(".")
        if code in _REPLACEMENT_REASONS:
            return _REPLACEMENT_REASONS[code] + (f" ({length})" if length else "")
    if not text:
        return "empty"
    if len(text) > UID_MAX_LENGTH:
        return f"over 64 characters ({len(text)})"
    if not text.isprintable():
        return f"with control characters ({for_log(text)})"
    if not _UID_PATTERN.fullmatch(text):
        return f"not a UID ({for_log(text)})"
    return None


def replacement_uid(raw: object) -> str | None:
    """The stand-in for a command UID the handler must refuse, or None when ``raw`` is a valid
    UID (used by the pynetdicom workaround in :mod:`cxr_node.dicom.scp`)."""
    if raw is None:
        return REPLACED_UID_ROOT + "1"
    text = str(raw)
    if not text:
        return REPLACED_UID_ROOT + "2"
    if len(text) > UID_MAX_LENGTH:
        return f"{REPLACED_UID_ROOT}3.{len(text)}"
    if not text.isprintable():
        return REPLACED_UID_ROOT + "4"
    if not _UID_PATTERN.fullmatch(text):
        return REPLACED_UID_ROOT + "5"
    return None


def request_problem(event: Any) -> str | None:
    """What is wrong with the UIDs of a C-STORE request's command, or None. Touches only
    attributes every C-STORE primitive has (they may be None)."""
    request = event.request
    for label, keyword in (
        ("Affected SOP Class UID", "AffectedSOPClassUID"),
        ("Affected SOP Instance UID", "AffectedSOPInstanceUID"),
    ):
        problem = uid_problem(getattr(request, keyword, None))
        if problem:
            return f"{label} in the request {problem}"
    context = getattr(event, "context", None)
    abstract_syntax = getattr(context, "abstract_syntax", None)
    if abstract_syntax is not None and str(abstract_syntax) != str(request.AffectedSOPClassUID):
        return "Affected SOP Class UID in the request differs from its presentation context"
    return None


def handle_echo(event: Any) -> int:
    """C-ECHO (PS3.4 Annex A): we are alive."""
    return status.SUCCESS


class _UnparsableHeader(Exception):
    """pydicom could not read the header (the cause says why)."""


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
        shadow: bool = False,
    ) -> None:
        self._spool = spool
        self._ledger = ledger
        self._router = router
        self._min_free_bytes = min_free_bytes
        self._max_instance_bytes = max_instance_bytes
        self._rules = rules
        self.sessions = sessions
        """Told which study each association sent, when a release should end a study."""
        self.shadow = shadow
        """Shadow mode: new studies are recorded as shadow (``router`` routes them so too)."""
        self.receive_limits = ReceiveLimits(max_instance_bytes, min_free_bytes, spool.free_bytes)
        """Applied while data sets arrive (see :mod:`cxr_node.dicom.receive`)."""
        self._instance_locks = [threading.Lock() for _ in range(64)]
        """Told which study each association sent, when a release should end a study."""

    def __call__(self, event: Any) -> int:
        """Handle one ``evt.EVT_C_STORE``; always return a status, never raise."""
        code = self._answer(event)
        count_store(code)
        return code

    def _answer(self, event: Any) -> int:
        calling_ae = str(getattr(event.assoc.requestor, "ae_title", "") or "").strip()
        try:
            return self._store(event, calling_ae)
        except OSError as exc:  # spool full (ENOSPC, EDQUOT) or unwritable
            log.error(
                "cannot write to the spool (%s) while storing from %s: Out of Resources",
                errno.errorcode.get(exc.errno or 0, type(exc).__name__),
                for_log(calling_ae),
            )
            return status.OUT_OF_RESOURCES
        except Exception as exc:  # a handler must answer, whatever went wrong
            log.error(
                "unexpected error while storing from %s: %s",
                for_log(calling_ae),
                traceback_frames(exc),
            )
            return status.PROCESSING_FAILURE

    @property
    def receive_folder(self) -> Path:
        """Where pynetdicom writes data sets as they arrive (see :mod:`cxr_node.dicom.receive`)."""
        return self._spool.receive_folder

    def _store(self, event: Any, calling_ae: str) -> int:
        sender = for_log(calling_ae)
        refused = request_problem(event)
        if refused:
            log.warning("from %s: %s: Cannot Understand", sender, refused)
            return status.INVALID_REQUEST_UID
        received = _received_file(event)
        if received is None:
            log.warning("from %s: C-STORE request declares no data set: Cannot Understand", sender)
            return status.NO_DATA_SET
        cut_short = self.receive_limits.refusal(received)
        if cut_short:
            log.warning("from %s: %s: Out of Resources", sender, cut_short)
            return status.OUT_OF_RESOURCES
        try:
            # Bounded: the header only (the pixels stay on disk), a deflated data set inflated
            # to disk under max_instance_bytes (see cxr_node.dicom.header); decoding is the
            # worker's job.
            with contextlib.ExitStack() as stack:
                try:
                    header = stack.enter_context(open_header(received, self._max_instance_bytes))
                except HeaderRefused:
                    raise
                except Exception as exc:
                    raise _UnparsableHeader() from exc
                return self._store_header(event, calling_ae, received, header)
        except HeaderRefused as exc:
            out_of_resources = exc.status == status.OUT_OF_RESOURCES
            answer = "Out of Resources" if out_of_resources else "Cannot Understand"
            log.warning("from %s: %s: %s", sender, exc.reason, answer)
            return exc.status
        except _UnparsableHeader as exc:
            log.warning(
                "from %s: data set cannot be parsed (%s): Cannot Understand",
                sender,
                type(exc.__cause__).__name__,
            )
            return status.CANNOT_UNDERSTAND

    def _store_header(self, event: Any, calling_ae: str, received: Path, header: Header) -> int:
        sender = for_log(calling_ae)
        dataset = header.dataset
        try:
            study_uid = str(dataset.get("StudyInstanceUID", "") or "").strip()
            sop_uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
            sop_class = str(dataset.get("SOPClassUID", "") or "").strip()
        except HeaderRefused:
            raise
        except Exception as exc:
            raise _UnparsableHeader() from exc

        requested_class = str(event.request.AffectedSOPClassUID)
        problem = None
        if not study_uid or not sop_uid:
            problem = "Study or SOP Instance UID missing"
        elif sop_class != requested_class:
            problem = "SOP Class UID in the data set differs from the request"
        elif sop_uid != str(event.request.AffectedSOPInstanceUID):
            problem = "SOP Instance UID in the data set differs from the request"
        if problem:
            log.warning("from %s: %s: Data Set does not match SOP Class", sender, problem)
            return status.DATA_SET_DOES_NOT_MATCH_SOP_CLASS

        if self._spool.free_bytes() < self._min_free_bytes:
            log.error("spool free space under the floor: answering Out of Resources")
            return status.OUT_OF_RESOURCES
        size = received.stat().st_size
        if self._max_instance_bytes is not None and size > self._max_instance_bytes:
            log.warning(
                "from %s: instance of %d bytes over max_instance_bytes: Out of Resources",
                sender,
                size,
            )
            return status.OUT_OF_RESOURCES

        try:
            decision = intake.evaluate(dataset, self._rules, has_pixel_data=header.has_pixel_data)
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
                sender,
            )
            return status.SUCCESS
        attributes = read_study_attributes(dataset)
        with self._instance_lock(study_key, sop_uid):
            return self._keep(
                event,
                calling_ae,
                received,
                (study_uid, sop_uid, sop_class),
                decision,
                attributes,
                digest,
            )

    def _instance_lock(self, study_key: str, sop_uid: str) -> threading.Lock:
        """One lock per spool file (striped): two associations sending the same UIDs at once
        are taken one after the other, so the second's conflict check sees the first's row
        before its file could replace the first's on disk (serve is one process: the lock
        file sees to that)."""
        digest = hashlib.blake2b(f"{study_key}/{sop_uid}".encode(), digest_size=2).digest()
        return self._instance_locks[int.from_bytes(digest, "little") % len(self._instance_locks)]

    def _keep(
        self,
        event: Any,
        calling_ae: str,
        received: Path,
        uids: tuple[str, str, str],
        decision: intake.Decision,
        attributes: StudyAttributes,
        digest: str,
    ) -> int:
        """Check for a patient conflict, move the file into the spool and record it; ``uids``
        are the Study Instance, SOP Instance and SOP Class UIDs."""
        sender = for_log(calling_ae)
        study_uid, sop_uid, sop_class = uids
        study_key = safe_key(study_uid)
        # Checked before the file is moved into place (the same UIDs name the same spool file:
        # patient A's image must not be overwritten), and again atomically when recorded.
        conflict = self._ledger.patient_conflict(
            study_key, sop_uid, attributes, calling_ae=calling_ae
        )
        if conflict is not None:
            return self._refuse_patient_conflict(conflict, study_uid, sender)
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
            attributes=attributes,
            shadow=self.shadow,
        )
        if isinstance(is_new, PatientConflict):  # a concurrent association came first
            if conflict_keeps_other_file(is_new, study_key):
                path.unlink(missing_ok=True)
            return self._refuse_patient_conflict(is_new, study_uid, sender)
        if self.sessions is not None:
            self.sessions.saw(event.assoc, study_key)
        log.info(
            "stored instance %s of study %s from %s (%d bytes)%s%s",
            log_ref(sop_uid),
            log_ref(study_uid),
            sender,
            size,
            "" if decision.eligible else f", not analysed: {decision.reason_code}",
            "" if is_new else ", already known",  # stored by a concurrent association
        )
        return status.SUCCESS

    def _refuse_patient_conflict(
        self, conflict: PatientConflict, study_uid: str, sender: str
    ) -> int:
        """One log line without patient data; the ledger holds the conflict (its event row)."""
        log.warning(
            "from %s: instance of study %s refused: %s UID already known for another patient "
            "(%s): Cannot Understand",
            sender,
            log_ref(study_uid),
            conflict.known_as,
            conflict.reason_code,
        )
        return status.PATIENT_CONFLICT


def conflict_keeps_other_file(conflict: PatientConflict, study_key: str) -> bool:
    """Whether the file just adopted belongs to no one else (so it may be deleted): not when the
    conflict is with the same instance of the same study, whose spool file it replaced."""
    return not (conflict.known_as == "SOP Instance" and conflict.study_key == study_key)


def data_set_digest(part10_file: Path) -> str:
    """SHA-256 of the data set of a Part 10 file, without its preamble and File Meta
    Information (PS3.10 7.1): the same content sent twice has the same digest."""
    start = data_set_offset(part10_file)
    with part10_file.open("rb") as stream:
        stream.seek(start)
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _received_file(event: Any) -> Path | None:
    """The Part 10 file pynetdicom wrote the data set to (chunked receive is on: see
    :func:`cxr_node.dicom.receive.enable_chunked_receive`); None when the request declared no
    data set."""
    path = event.dataset_path
    return None if path is None else Path(path)


def _peer_address(event: Any) -> str | None:
    try:
        return str(event.assoc.requestor.address)
    except AttributeError:
        return None
