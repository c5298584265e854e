"""Builds the listening Application Entity: contexts, limits, handlers (PS3.7, PS3.8)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cxr_node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from cxr_node.dicom.handlers import StoreHandler, handle_echo
from cxr_node.dicom.receive import enable_chunked_receive
from cxr_node.settings import Settings

log = logging.getLogger(__name__)

SourceGate = Callable[[str, str | None], bool]
"""Says whether a calling AE title from an address may associate with us."""

_NOBODY = "\x00"
"""An AE title no peer can have: listed alone, it makes pynetdicom reject the caller."""


class GatedAE(AE):
    """An AE that admits only known sources (PS3.8 7.1.1.4: A-ASSOCIATE-RJ, rejected-permanent,
    service-user, calling AE title not recognised).

    pynetdicom checks ``require_calling_aet`` while it negotiates, in the association's own
    thread; answering per association lets the rule see the caller's address as well as its
    AE title, and lets ``cxr-node aet`` change the rules while the node runs.
    """

    def __init__(
        self, ae_title: str, gate: SourceGate | None, other_titles: tuple[str, ...] = ()
    ) -> None:
        super().__init__(ae_title=ae_title)
        self._gate = gate
        self._other_titles = frozenset(other_titles)
        self.receive_folder: Path | None = None
        """Where C-STORE data sets are written as they arrive (cxr_node.dicom.receive)."""

    @property  # type: ignore[misc]
    def require_calling_aet(self) -> list[str]:
        """The caller's own title when it is known; otherwise a title nobody has.

        Also where a call to one of our other AE titles is answered under that title (pynetdicom
        checks the called title right after this, against the acceptor's).
        """
        association = threading.current_thread()
        if not isinstance(association, Association):
            return []
        primitive = association.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        if called in self._other_titles:
            association.acceptor.ae_title = called
        if self._gate is None:
            return []
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        address = association.requestor.address or None
        if self._gate(calling, address):
            return [calling]
        log.warning("association from %s at %s refused: unknown source", calling, address)
        return [_NOBODY]


def build_ae(settings: Settings, gate: SourceGate | None = None) -> GatedAE:
    """An AE that accepts Verification and CR/DX/SC storage in every common transfer syntax,
    from known sources only when ``gate`` is given."""
    ae = GatedAE(settings.ae_title, gate, tuple(settings.additional_ae_titles))
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

    Data sets are received chunked, straight into the spool's folder, and never decoded here.
    """
    enable_chunked_receive()
    ae = build_ae(settings, gate)
    ae.receive_folder = store_handler.receive_folder
    handlers: list[Any] = [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, store_handler)]
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
