"""Builds the listening Application Entity: contexts, limits, handlers (PS3.7, PS3.8)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.tag import Tag
from pynetdicom import AE, evt
from pynetdicom import sop_class as pynetdicom_sop_classes
from pynetdicom.association import Association
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cxr_node import compat
from cxr_node.dicom import status
from cxr_node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from cxr_node.dicom.handlers import StoreHandler, for_log, handle_echo, replacement_uid
from cxr_node.dicom.receive import enable_chunked_receive
from cxr_node.logs import describe_exception
from cxr_node.settings import Settings

log = logging.getLogger(__name__)

SourceGate = Callable[[str, str | None], bool]
"""Says whether a calling AE title from an address may associate with us."""


class AssociationGate:
    """``evt.EVT_REQUESTED`` handler: admits only known sources (PS3.8 7.1.1.4: A-ASSOCIATE-RJ,
    rejected-permanent, service-user, calling AE title not recognised), and answers a call to
    one of our other AE titles under that title.

    pynetdicom triggers ``EVT_REQUESTED`` in the association's own thread once the
    A-ASSOCIATE-RQ is in, before it negotiates; a handler that rejects there is not negotiated
    further (pynetdicom 3.0 ``Association.run_reactor``). Deciding per association lets the
    rule see the caller's address as well as its AE title, and lets ``cxr-node aet`` change the
    rules while the node runs. A wrong called AE title is left to pynetdicom's own
    ``require_called_aet`` check (called AE title not recognised).
    """

    def __init__(
        self, ae_title: str, gate: SourceGate | None, other_titles: tuple[str, ...] = ()
    ) -> None:
        self._ae_title = ae_title.strip()
        self._gate = gate
        self._other_titles = frozenset(title.strip() for title in other_titles)

    def __call__(self, event: Any) -> None:
        association = event.assoc
        primitive = association.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if called in self._other_titles:
            association.acceptor.ae_title = called  # pynetdicom compares the called title with it
        if self._gate is None or called not in self._other_titles | {self._ae_title}:
            return
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        address = association.requestor.address or None
        try:
            admitted = self._gate(calling, address)
        except Exception as exc:  # an exception here would let pynetdicom accept the caller
            log.error(
                "association from %s at %s refused: cannot check its source (%s)",
                for_log(calling),
                for_log(address),
                describe_exception(exc),
            )
            _reject(association, _REJECTED_TRANSIENT, _NO_REASON_GIVEN)
            return
        if not admitted:
            log.warning(
                "association from %s at %s refused: unknown source",
                for_log(calling),
                for_log(address),
            )
            _reject(association, _REJECTED_PERMANENT, _CALLING_AE_TITLE_NOT_RECOGNISED)


_REJECTED_PERMANENT = 0x01
_REJECTED_TRANSIENT = 0x02
_SERVICE_USER = 0x01
_NO_REASON_GIVEN = 0x01
_CALLING_AE_TITLE_NOT_RECOGNISED = 0x03


def _reject(association: Association, result: int, diagnostic: int) -> None:
    """Send A-ASSOCIATE-RJ (PS3.8 9.3.4) and wait, as pynetdicom does after its own
    rejections, until the peer has it and the connection is closed (else the socket may close
    before the rejection is out)."""
    association.acse.send_reject(result, _SERVICE_USER, diagnostic)
    association.kill()


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and CR/DX/SC storage in every common transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = settings.dimse_timeout_seconds
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def start_server(
    settings: Settings, store_handler: StoreHandler, gate: SourceGate | None = None
) -> ThreadedAssociationServer:
    """Start listening in background threads; the caller owns shutdown().

    Data sets are received chunked, straight into the spool's folder, and never decoded here;
    that folder becomes the process's temporary folder (:mod:`cxr_node.dicom.receive`). Only
    sources ``gate`` admits may associate, when it is given.
    """
    enable_chunked_receive(store_handler.receive_folder)
    compat.install_pynetdicom_socket_close_fix()
    install_dimse_request_guards()
    ae = build_ae(settings)
    admit = AssociationGate(settings.ae_title, gate, tuple(settings.additional_ae_titles))
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, admit),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store_handler),
    ]
    sessions = store_handler.sessions
    if sessions is not None:
        handlers += [
            (evt.EVT_RELEASED, sessions.released),
            (evt.EVT_ABORTED, sessions.ended_without_release),
            (evt.EVT_CONN_CLOSE, sessions.ended_without_release),
        ]
    ssl_context = settings.tls.server_context() if settings.tls is not None else None
    server = ae.start_server(
        (settings.bind_address, settings.port),
        block=False,
        evt_handlers=handlers,
        ssl_context=ssl_context,
    )
    assert server is not None
    return server


# --- WORKAROUND for pynetdicom 3.0 internals: to be moved to cxr_node.compat ----------------------
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
    """Install the two guards (once); False when this pynetdicom lacks what they patch."""
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
                    guarded = _guarded_store_command(command)
                    if guarded is not None:
                        self.encoded_command_set = BytesIO()
                        items[index] = [context_id, data[:1] + guarded]
                        replacement = P_DATA()
                        replacement.presentation_data_value_list = items
                        primitive = replacement
                    break
        return original_decode(self, primitive, assoc)

    def serve_request(self: Any, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_ECHO) or self._sent_release or msg.MessageID is None:
            return original_serve(self, msg, context_id)
        context = self._accepted_cx.get(context_id)
        if context is None:
            return original_serve(self, msg, context_id)  # pynetdicom aborts
        if isinstance(msg, C_STORE):
            if not msg.is_valid_request:
                return original_serve(self, msg, context_id)  # logged, ignored
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


def _guarded_store_command(command: bytes) -> bytes | None:
    """The C-STORE-RQ command set with its unusable UIDs replaced by stand-ins, re-encoded
    (Implicit VR Little Endian, PS3.7 6.3.1); None when nothing needs replacing."""
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
