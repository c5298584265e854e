"""Builds the listening Application Entity: contexts, limits, handlers (PS3.7, PS3.8)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cxr_node import compat
from cxr_node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from cxr_node.dicom.handlers import StoreHandler, for_log, handle_echo
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


class ListeningAE(AE):
    """pynetdicom's AE, whose association limit counts only associations that have sent their
    A-ASSOCIATE-RQ: a connection still waiting for one (at most the ACSE timeout) takes no
    slot, so connections that never associate cannot lock real senders out (PS3.8 7.1.1.4
    local-limit-exceeded is for associations)."""

    @property
    def active_associations(self) -> list[Association]:
        return [
            association
            for association in super().active_associations
            if not (association.is_acceptor and association.requestor.primitive is None)
        ]


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and CR/DX/SC storage in every common transfer syntax.
    Its ACSE timeout is the deadline for a connection's A-ASSOCIATE-RQ (the ARTIM timer,
    PS3.8 9.1.5)."""
    ae = ListeningAE(ae_title=settings.ae_title)
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
    ae = build_ae(settings)
    compat.install_front_door_limits(
        ae,
        max_request_bytes=settings.max_association_request_bytes,
        max_pending=4 * settings.max_associations,
        watch=store_handler.receive_limits,
    )
    admit = AssociationGate(settings.ae_title, gate, tuple(settings.additional_ae_titles))
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, admit),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, store_handler),
        (evt.EVT_ABORTED, compat.discard_partial_receives),
        (evt.EVT_CONN_CLOSE, compat.discard_partial_receives),
        (evt.EVT_RELEASED, compat.discard_partial_receives),
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
