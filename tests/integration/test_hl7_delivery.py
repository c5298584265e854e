"""Results to a RIS by HL7 (issue 15): ``cxr-node serve`` with one destination of kind ``hl7``;
the RIS (python-hl7's MLLP server, tests/mllp.py) is down for the first 30 s and gets the ORU^R01
once it is back, exactly once, with the study's patient, order and findings."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.conftest import require_tool, wait_until
from tests.integration.node import NodeProcess, storescu
from tests.mllp import MllpListener

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"
OUTAGE_SECONDS = 30


def test_the_ris_gets_the_oru_once_it_is_back_after_30_seconds(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    require_tool("/usr/bin/storescu")
    image = corpus / CHEST
    source = pydicom.dcmread(image, stop_before_pixels=True)
    ris = MllpListener()  # down (its port reserved) until started
    config = tmp_path / "node.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    {"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": ris.port,
                     "receiving_application": "RIS", "timeout_seconds": 3},
                ],
                "delivery_retry_initial_seconds": 1,
                "delivery_retry_max_seconds": 4,
            }
        )
    )  # fmt: skip
    node = NodeProcess(tmp_path / "node", models_dir, "--config", str(config),
                       "--quiet-seconds", "0.5").start()  # fmt: skip
    nodes.append(node)
    assert storescu(node.port, image).returncode == 0

    def attempts() -> int:
        studies = node.studies()
        deliveries = studies[0].get("deliveries", {}) if studies else {}
        ris_delivery = deliveries.get("ris", {}) if isinstance(deliveries, dict) else {}
        return int(ris_delivery.get("attempts", 0)) if isinstance(ris_delivery, dict) else 0

    assert wait_until(lambda: attempts() >= 1, timeout=120), node.log()  # analysed, refused
    time.sleep(OUTAGE_SECONDS)  # the RIS stays down 30 s from the first failed attempt
    assert attempts() >= 3, node.log()  # the node kept trying, with backoff
    ris.start()
    try:
        assert wait_until(lambda: len(ris.received) >= 1, timeout=60), node.log()
        assert wait_until(lambda: node.studies()[0]["state"] == "delivered", timeout=15)
        time.sleep(2)  # nothing more comes: exactly once
        (message,) = ris.received
    finally:
        ris.stop()
    assert str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01"
    assert str(message.segment("PID")[3]).split("^")[0] == str(source.get("PatientID", ""))
    assert str(message.segment("OBR")[18]) == str(source.get("AccessionNumber", ""))
    observations = message.segments("OBX")
    assert len(observations) == 2 + 18  # score, priority, the DEMO model's 18 findings
    assert "DEMO" in str(message.segment("NTE")[3])
    assert node.studies()[0]["deliveries"]["ris"]["state"] == "delivered"
