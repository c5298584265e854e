"""Send one data set (however odd) over C-STORE with pynetdicom and say what happened."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE

from cxr_node import check


@dataclass(frozen=True)
class Outcome:
    """``status`` when a C-STORE response came back; otherwise why nothing was stored."""

    status: int | None
    note: str = ""

    @property
    def stored(self) -> bool:
        return self.status == 0


def send(
    port: int, dataset: Dataset | Path, sop_class: str, syntax: str, timeout: float = 30.0
) -> Outcome:
    """One association, one C-STORE of ``dataset`` (a Dataset, or a file sent byte for byte)."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sop_class, [syntax])
    association = ae.associate("127.0.0.1", port, ae_title="CXR_NODE")
    if not association.is_established:
        return Outcome(None, "association refused")
    try:
        if not association.accepted_contexts:
            return Outcome(None, "no presentation context accepted")
        try:
            answer = association.send_c_store(dataset)
        except (ValueError, AttributeError, TypeError, OSError) as exc:
            return Outcome(None, f"sender could not encode it ({type(exc).__name__})")
        if "Status" not in answer:
            return Outcome(None, "no response (aborted or timed out)")
        return Outcome(int(answer.Status))
    finally:
        if association.is_established:
            association.release()


def echo(port: int) -> bool:
    """True when the node answers C-ECHO."""
    return check.echo("127.0.0.1", port, "CXR_NODE", calling_ae="MODALITY", timeout=30) is None


def transfer_syntax_of(dataset: Dataset) -> str:
    """The data set's transfer syntax, Implicit VR Little Endian when it does not say."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(syntax) if syntax else ImplicitVRLittleEndian
