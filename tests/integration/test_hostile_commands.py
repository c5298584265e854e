"""Hostile C-STORE commands and other services against a real ``cxr-node serve`` process: a
status for each, the node keeps answering, and its log file holds no forged or giant line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxr_node.dicom import status
from tests.integration.node import NodeProcess
from tests.integration.sending import echo
from tests.unit.test_front_door_commands import _c_request, _context_id, _exchange, raw_c_store

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length"),
]

FORGED = "1.2.3\nFORGED-LINE"
HOSTILE = ["", None, "1.2\x003", FORGED, "1." + "2" * 5000]


def test_hostile_commands_get_a_status_and_leave_the_log_clean(
    tmp_path: Path, models_dir: Path, nodes: list[NodeProcess]
) -> None:
    node = NodeProcess(tmp_path / "node", models_dir).start()
    nodes.append(node)
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CXR_NODE")
    assert assoc.is_established
    try:
        statuses = [raw_c_store(assoc, value).Status for value in HOSTILE]
        find = _exchange(assoc, _c_request(C_FIND), _context_id(assoc))
        assert assoc.send_c_echo().Status == status.SUCCESS
    finally:
        assoc.release()
    assert statuses == [status.INVALID_REQUEST_UID] * len(HOSTILE)
    assert find.Status == status.UNRECOGNIZED_OPERATION
    assert echo(node.port)
    log = node.log()
    assert "\x00" not in log
    assert not any(line.startswith("FORGED-LINE") for line in log.splitlines())
    assert max(len(line) for line in log.splitlines()) < 2000
    assert "Cannot Understand" in log
