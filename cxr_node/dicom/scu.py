"""Delivery of result objects by C-STORE SCU (PS3.4 Annex B), one association per batch.

Failures are classified so that the caller's policy is simple: :class:`TransientError` (refused
connection, timeout, 0xA7xx) is retried with backoff, :class:`DeliveryRejected` (permanent
association rejection, 0xA9xx, 0xCxxx) is recorded and not retried.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from cxr_node.dicom import status
from cxr_node.errors import CxrNodeError, TransientError
from cxr_node.jobs import Destination

log = logging.getLogger(__name__)

_WARNING_STATUSES = {0xB000, 0xB007, 0xB006, 0x0107, 0x0116}
_PERMANENT_REJECTION = 0x01


class DeliveryRejected(CxrNodeError):
    """The destination refused for good; retrying will not help."""


def send_files(
    destination: Destination, files: list[Path], calling_ae: str, timeout: float = 30.0
) -> None:
    """Send every file to one destination over one association, or raise why not."""
    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, syntax in sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ):
        syntaxes = list(dict.fromkeys([syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.add_requested_context(sop_class, syntaxes)

    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected and assoc.acceptor.primitive is not None:
            result = assoc.acceptor.primitive.result
            reason = assoc.acceptor.primitive.result_str
            if result == _PERMANENT_REJECTION:
                raise DeliveryRejected(f"association rejected permanently: {reason}")
            raise TransientError(f"association rejected transiently: {reason}")
        raise TransientError("no association (connection refused, aborted or timed out)")
    try:
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        refused = sorted({str(ds.SOPClassUID) for ds in datasets} - accepted)
        if refused:
            names = ", ".join(UID(uid).name for uid in refused)
            raise DeliveryRejected(f"destination does not accept {names}")
        for dataset in datasets:
            answer = assoc.send_c_store(dataset)
            code = int(answer.Status) if "Status" in answer else None
            if code is None:
                raise TransientError("no C-STORE response (timeout or abort)")
            if code == status.SUCCESS or code in _WARNING_STATUSES:
                continue
            if status.is_retryable(code):
                raise TransientError(f"destination answered 0x{code:04X} (out of resources)")
            raise DeliveryRejected(f"destination answered 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    log.info("delivered %d objects to %s", len(datasets), destination.ae_title)
