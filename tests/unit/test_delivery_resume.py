"""A delivery that fails part-way through a study resumes where it stopped: the result
instances the destination acknowledged are remembered in the ledger and not sent again (the
chaos test once saw an SR received twice after the destination went down between the SR and
the SC). Real pynetdicom destination, real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt

from cxr_node.destinations import Destination
from cxr_node.dicom import status
from cxr_node.ledger import DeliveryState, Ledger, ResultRow, StudyState
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from tests.conftest import free_port
from tests.unit._synthetic import make_dx_chest
from workers import delivery
from workers.deliver.dicom import AssociationPool
from workers.runtime import WorkerContext

STUDY = "1.2.826.0.1.3680043.10.1"
PACS = "pacs"


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger(ledger_url)
    yield opened
    opened.close()


def _analysed_study(ledger: Ledger, spool: Spool) -> list[str]:
    """A study ANALYSED with an SR and an SC on disk, pending to PACS; their SOP UIDs."""
    ledger.record_instance(
        study_key=STUDY,
        study_uid=STUDY,
        sop_instance_uid=f"{STUDY}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=f"{STUDY}/{STUDY}.1.dcm",
        size=1,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae="MODALITY",
        destinations=[PACS],
    )
    ledger.mark_queued(STUDY)
    token = ledger.claim(STUDY, lease_seconds=60)
    rows = []
    for kind, sop_class in (("sr", Comprehensive3DSRStorage), ("sc", SecondaryCaptureImageStorage)):
        dataset = make_dx_chest(64, 64)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = spool.result_path(STUDY, dataset.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
        rows.append(
            ResultRow(
                sop_instance_uid=dataset.SOPInstanceUID,
                source_sop_instance_uid=f"{STUDY}.1",
                kind=kind,
                path=str(path.relative_to(spool.root)),
            )
        )
    assert ledger.record_results(STUDY, rows, [PACS], token)
    return [row.sop_instance_uid for row in rows]


def _destination_refusing_store(number: int) -> tuple[Any, int, list[str]]:
    """A Storage SCP answering 0xA700 (out of resources) to its ``number``-th C-STORE."""
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return status.OUT_OF_RESOURCES if len(received) == number else status.SUCCESS

    ae = AE(ae_title="DEST")
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, port, received


def test_a_study_interrupted_after_one_result_resumes_with_the_other_only(
    ledger: Ledger, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    results = _analysed_study(ledger, spool)
    server, port, received = _destination_refusing_store(2)
    destination = Destination(ae_title="DEST", host="127.0.0.1", port=port, name=PACS)
    pool = AssociationPool("CXR", timeout=10, idle_seconds=30)
    ctx = cast(
        WorkerContext,
        SimpleNamespace(ledger=ledger, spool=spool, pool=pool, settings=Settings()),
    )
    try:
        (due,) = ledger.due_deliveries(PACS)
        assert not delivery._deliver_study(ctx, destination, due)  # down after the first
        assert ledger.deliveries_of(STUDY)[PACS].state is DeliveryState.PENDING
        first = received[0]
        (second,) = set(results) - {first}
        resumed = ledger.deliveries_of(STUDY)[PACS]  # backed off: taken as if due
        assert resumed.sent_instances == {first}
        assert delivery._deliver_study(ctx, destination, resumed)
    finally:
        pool.close_all()
        server.shutdown()
    assert received == [first, second, second]  # the first was acknowledged, never sent again
    assert ledger.deliveries_of(STUDY)[PACS].state is DeliveryState.DELIVERED
    study = ledger.study(STUDY)
    assert study is not None and study.state is StudyState.DELIVERED
