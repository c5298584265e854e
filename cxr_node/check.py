"""``cxr-node check``: is the node answering C-ECHO and is its broker reachable? (health probe)"""

from __future__ import annotations

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_node.dicom import status
from cxr_node.queue import JobQueue
from cxr_node.settings import Settings


def echo(
    host: str, port: int, called_ae: str, calling_ae: str = "CXR_CHECK", timeout: float = 5.0
) -> str | None:
    """Send one C-ECHO (PS3.7 9.1.5); return None on success, else what went wrong."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return f"no association with {called_ae}@{host}:{port} (refused, rejected or timed out)"
    try:
        answer = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(answer.Status) if "Status" in answer else None
    if code != status.SUCCESS:
        return f"C-ECHO answered {'nothing' if code is None else hex(code)}"
    return None


def run_check(settings: Settings) -> str | None:
    """None when healthy, else one line saying what is wrong."""
    host = "127.0.0.1" if settings.bind_address in {"0.0.0.0", "::", ""} else settings.bind_address
    problem = echo(host, settings.port, settings.ae_title)
    if problem:
        return problem
    try:
        JobQueue(settings).check_broker()
    except Exception as exc:
        return f"broker unreachable ({type(exc).__name__})"
    return None
