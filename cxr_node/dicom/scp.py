"""Builds the listening Application Entity: contexts, limits, handlers (PS3.7, PS3.8)."""

from __future__ import annotations

from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from cxr_node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from cxr_node.dicom.handlers import StoreHandler, handle_echo
from cxr_node.settings import Settings


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification and CR/DX/SC storage in every common transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.network_timeout = settings.network_timeout_seconds
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout_seconds
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def start_server(settings: Settings, store_handler: StoreHandler) -> ThreadedAssociationServer:
    """Start listening in background threads; the caller owns shutdown()."""
    ae = build_ae(settings)
    handlers: list[Any] = [(evt.EVT_C_ECHO, handle_echo), (evt.EVT_C_STORE, store_handler)]
    server = ae.start_server(
        (settings.bind_address, settings.port), block=False, evt_handlers=handlers
    )
    assert server is not None
    return server
