"""pynetdicom 3.0: hostile DIMSE requests answered with a status instead of a crash or abort.

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import logging
from io import BytesIO
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from cxr_node.compat.front_door import _peer, _watch_chunked_receive
from cxr_node.compat.versions import pynetdicom_supported
from cxr_node.logs import describe_exception

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


#
# Two patches of pynetdicom 3.0 internals, both needed for hostile requests to get a status:
#
# 1. ``DIMSEMessage.decode_msg``: with STORE_RECV_CHUNKED_DATASET on, decoding a C-STORE-RQ
#    whose command has no, or an empty, Affected SOP Instance UID raises AttributeError in the
#    DUL thread (writing the temporary file's File Meta), which kills it: no answer, a dead
#    connection. A UID over 64 characters raises ValueError in ``message_to_primitive`` and the
#    association is aborted; a UID with control characters is logged raw by pynetdicom
#    ("Non-conformant ... value"), a forged log line. The guard rewrites such UIDs in the
#    command set, before pynetdicom reads it, to stand-ins (``handlers.replacement_uid``,
#    under the nil-UUID root 2.25.0) that the C-STORE handler refuses with INVALID_REQUEST_UID.
# 2. ``Association._serve_request``: a C-FIND, C-GET, C-MOVE or DIMSE-N request on an accepted
#    (storage or verification) context is handed to that context's service class, which fails
#    and aborts, or never answers. The guard answers it with its own response type and status
#    0x0211 Unrecognized Operation (PS3.7 C.4.2); a C-CANCEL (which has no response, PS3.7
#    9.3.2.3) is ignored; a C-STORE whose SOP class is not a storage class goes to the storage
#    service all the same, so the handler answers it.

_C_STORE_RQ = 0x0001
_COMMAND_GROUP_LENGTH = Tag(0x0000, 0x0000)
_COMMAND_UIDS = (Tag(0x0000, 0x0002), Tag(0x0000, 0x1000))
"""Affected SOP Class UID, Affected SOP Instance UID (PS3.7 E.1-1)."""
_LAST_COMMAND_FRAGMENT = 0x03
"""Message Control Header bits: command information, last fragment (PS3.8 E.2)."""


def install_dimse_request_guards() -> bool:
    """Install the two guards above (once); False (pynetdicom's own behaviour) on another
    pynetdicom than 3.0.x, or when it lacks what they patch."""
    if not pynetdicom_supported():
        return False
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    original_decode = getattr(DIMSEMessage, "decode_msg", None)
    original_serve = getattr(Association, "_serve_request", None)
    if original_decode is None or original_serve is None:
        log.warning("pynetdicom internals changed: hostile C-STORE commands are not guarded")
        return False
    if getattr(original_decode, "_cxr_guard", False):
        return True

    def decode_msg(self: Any, primitive: Any, assoc: Any = None) -> Any:
        if isinstance(primitive, P_DATA) and primitive.presentation_data_value_list:
            items: list[Any] = [list(item) for item in primitive.presentation_data_value_list]
            for index, (context_id, data) in enumerate(items):
                if data and data[0] & _LAST_COMMAND_FRAGMENT == _LAST_COMMAND_FRAGMENT:
                    command = self.encoded_command_set.getvalue() + data[1:]
                    if not _known_command(command):
                        _abort_undecodable(self, assoc, None)
                        return False
                    guarded = _guarded_store_command(command)
                    if guarded is not None:
                        self.encoded_command_set = BytesIO()
                        items[index] = [context_id, data[:1] + guarded]
                        replacement = P_DATA()
                        replacement.presentation_data_value_list = items
                        primitive = replacement
                    break
        try:
            complete = original_decode(self, primitive, assoc)
        except Exception as exc:  # raised in the DUL's state machine, it would kill its thread
            _abort_undecodable(self, assoc, exc)
            return False
        _watch_chunked_receive(self, assoc, bool(complete))
        return complete

    def serve_request(self: Any, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_ECHO) or self._sent_release or msg.MessageID is None:
            return original_serve(self, msg, context_id)
        context = self._accepted_cx.get(context_id)
        if context is None:
            return original_serve(self, msg, context_id)  # pynetdicom aborts
        if isinstance(msg, C_STORE):
            if not msg.is_valid_request:
                return original_serve(self, msg, context_id)  # logged, ignored
            from pynetdicom import sop_class as pynetdicom_sop_classes
            from pynetdicom.service_class import StorageServiceClass

            service = pynetdicom_sop_classes.uid_to_service_class(str(msg.AffectedSOPClassUID))
            if service is StorageServiceClass:
                return original_serve(self, msg, context_id)
            return _serve_with_storage(self, msg, context)
        if isinstance(msg, C_CANCEL):
            log.info("C-CANCEL with nothing to cancel: ignored")
            return None
        _answer_unrecognized(self, msg, context_id)
        return None

    decode_msg._cxr_guard = True  # type: ignore[attr-defined]
    DIMSEMessage.decode_msg = decode_msg  # type: ignore[method-assign]
    Association._serve_request = serve_request  # type: ignore[method-assign]
    return True


def _known_command(command: bytes) -> bool:
    """Whether a command set decodes and names a DIMSE command pynetdicom knows (PS3.7 E.1)."""
    from pynetdicom.dimse_messages import _MESSAGE_TYPES
    from pynetdicom.dsutils import decode

    try:
        field = decode(BytesIO(command), True, True).get("CommandField")
    except Exception:
        return False
    return isinstance(field, int) and field in _MESSAGE_TYPES


def _abort_undecodable(message: Any, association: Any, exc: BaseException | None) -> None:
    """A DIMSE message that cannot be decoded is a protocol error: A-ABORT (Evt19, PS3.8
    9.2.3) rather than pynetdicom's exception in the DUL thread, which killed it."""
    from cxr_node.dicom.handlers import for_log

    message.encoded_command_set = BytesIO()
    log.warning(
        "undecodable DIMSE command from %s%s: aborted",
        for_log(_peer(association)) if association is not None else "?",
        f" ({describe_exception(exc)})" if exc is not None else "",
    )
    if association is not None:
        association.dul.event_queue.put("Evt19")


def _guarded_store_command(command: bytes) -> bytes | None:
    """The C-STORE-RQ command set with its unusable UIDs replaced by stand-ins, re-encoded
    (Implicit VR Little Endian, PS3.7 6.3.1); None when nothing needs replacing."""
    from pynetdicom.dsutils import decode, encode

    from cxr_node.dicom.handlers import replacement_uid

    try:
        dataset = decode(BytesIO(command), True, True)
        if dataset.get("CommandField") != _C_STORE_RQ:
            return None
        replaced = False
        for tag in _COMMAND_UIDS:
            raw = dataset.get_item(tag) if tag in dataset else None
            value = None
            if raw is not None:
                value = (raw.value or b"").decode("latin-1").rstrip("\x00 ")
            stand_in = replacement_uid(value)
            if stand_in is not None:
                if tag in dataset:
                    del dataset[tag]
                dataset.add_new(tag, "UI", stand_in)
                replaced = True
        if not replaced:
            return None
        if _COMMAND_GROUP_LENGTH in dataset:
            del dataset[_COMMAND_GROUP_LENGTH]
        body = encode(dataset, True, True)
        if body is None:
            return None
        dataset.add_new(_COMMAND_GROUP_LENGTH, "UL", len(body))
        return encode(dataset, True, True)
    except Exception as exc:  # leave it to pynetdicom, as before
        log.warning("cannot guard a C-STORE command (%s)", describe_exception(exc))
        return None


def _serve_with_storage(association: Any, msg: Any, context: Any) -> None:
    """What ``Association._serve_request`` does, with the storage service class."""
    from pynetdicom.service_class import StorageServiceClass

    try:
        association.dimse.cancel_req = {}
        association._is_paused = True
        StorageServiceClass(association).SCP(msg, context)
        association._is_paused = False
        association.dimse.cancel_req = {}
    except Exception as exc:
        log.error("C-STORE could not be served (%s): aborting", describe_exception(exc))
        association.abort()


def _answer_unrecognized(association: Any, msg: Any, context_id: int) -> None:
    """Answer a DIMSE request we do not provide with its response type and 0x0211."""
    from cxr_node.dicom import status
    from cxr_node.dicom.handlers import for_log

    calling = getattr(association.requestor, "ae_title", "")
    log.warning(
        "%s from %s: not a service of this node: Unrecognized Operation",
        for_log(getattr(msg, "msg_type", type(msg).__name__)),
        for_log(str(calling).strip()),
    )
    try:
        response = type(msg)()
        response.MessageIDBeingRespondedTo = msg.MessageID
        response.Status = status.UNRECOGNIZED_OPERATION
        association.dimse.send_msg(response, context_id)
    except Exception as exc:
        log.error("cannot answer %s (%s): aborting", type(msg).__name__, describe_exception(exc))
        association.abort()
