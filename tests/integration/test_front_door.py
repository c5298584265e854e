"""The front door with real peers: DICOM TLS on the listener (DCMTK ``storescu +tls`` with a
client certificate), known sources managed with ``cxr-node aet`` while the node runs, and
``cxr-node status`` telling what happened to a study."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, node_env, require_tool, wait_until
from tests.integration.node import NodeProcess, storescu
from tests.pki import make_pki

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"


def _cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_node", *args, "--data-dir", str(node.data_dir)],
        cwd=REPO,
        env=node_env(node.models),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _config(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"study_quiet_seconds": 0.3, **values}))
    return str(path)


def test_tls_listener_takes_a_radiograph_from_storescu_with_a_client_certificate(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    require_tool("/usr/bin/storescu")
    pki = make_pki(tmp_path / "pki")
    tls = {
        "cert_file": str(pki.server_cert),
        "key_file": str(pki.server_key),
        "ca_file": str(pki.ca_cert),
    }
    node = NodeProcess(
        tmp_path / "node", models_dir, "--config", _config(tmp_path, {"tls": tls})
    ).start()
    nodes.append(node)
    with_cert = ("+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert))
    sent = storescu(node.port, corpus / CHEST, extra=with_cert)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: bool(node.studies()), timeout=30)
    # plain TCP, and TLS without a client certificate, are refused
    assert storescu(node.port, corpus / CHEST).returncode != 0
    no_cert = ("+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.server_cert))
    assert storescu(node.port, corpus / CHEST, extra=no_cert).returncode != 0
    assert len(node.studies()) == 1


def test_known_sources_are_managed_while_the_node_runs(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    require_tool("/usr/bin/storescu")
    config = _config(
        tmp_path,
        {"require_known_sources": True, "destinations": ["PACS@127.0.0.1:9"]},
    )
    node = NodeProcess(tmp_path / "node", models_dir, "--config", config).start()
    nodes.append(node)
    image = corpus / CHEST

    refused = storescu(node.port, image, calling="NEW_CR")
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stderr
    assert "Calling AE Title Not Recognized" in refused.stderr

    added = _cli(
        node,
        "aet",
        "add",
        "NEW_CR",
        "--host",
        "127.0.0.1",
        "--destination",
        "PACS",
        "--config",
        config,
    )
    assert added.returncode == 0, added.stderr
    assert wait_until(
        lambda: storescu(node.port, image, calling="NEW_CR").returncode == 0, timeout=15
    ), node.log()

    listed = json.loads(_cli(node, "aet", "list", "--json", "--config", config).stdout)
    assert listed == [
        {"ae_title": "NEW_CR", "host": "127.0.0.1", "destinations": ["PACS"], "origin": "ledger"}
    ]
    unknown_destination = _cli(node, "aet", "add", "X", "--destination", "NOPE", "--config", config)
    assert unknown_destination.returncode != 0 and "NOPE" in unknown_destination.stderr

    assert _cli(node, "aet", "remove", "NEW_CR", "--host", "127.0.0.1").returncode == 0
    assert wait_until(
        lambda: storescu(node.port, image, calling="NEW_CR").returncode != 0, timeout=15
    )
    assert "association from NEW_CR at 127.0.0.1 refused: unknown source" in node.log()


def _one_analysed_study(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> tuple[NodeProcess, Path, str]:
    """A node (no destination) that has analysed one study: the node, the image, its study."""
    require_tool("/usr/bin/storescu")
    node = NodeProcess(tmp_path / "node", models_dir, "--quiet-seconds", "0.3").start()
    nodes.append(node)
    image = corpus / CHEST
    assert storescu(node.port, image).returncode == 0
    assert wait_until(lambda: node.studies() and node.studies()[0]["state"] == "analysed", 90)
    return node, image, str(node.studies()[0]["study_uid"])


def test_status_tells_what_happened_to_a_study(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    node, _image, study_uid = _one_analysed_study(tmp_path, models_dir, corpus, nodes)

    status = json.loads(_cli(node, "status", study_uid, "--json").stdout)
    assert status["state"] == "analysed"
    assert status["calling_ae"] == "MODALITY"
    assert [i["eligible"] for i in status["instances"]] == [True]
    assert sorted(r["kind"] for r in status["results"]) == ["sc", "sr"]
    assert [e["state"] for e in status["history"]][:1] == ["received"]
    assert "analysed" in [e["state"] for e in status["history"]]
    text = _cli(node, "status", study_uid)
    assert text.returncode == 0 and "analysed" in text.stdout
    assert _cli(node, "status", "1.2.3.4.5.6.7").returncode == 1


def test_a_resent_study_is_not_analysed_twice_unless_reprocess_is_asked(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    node, image, study_uid = _one_analysed_study(tmp_path, models_dir, corpus, nodes)

    def analysed_count() -> int:
        history = json.loads(_cli(node, "status", study_uid, "--json").stdout)["history"]
        return sum(1 for event in history if event["state"] == "analysed")

    assert storescu(node.port, image).returncode == 0  # the same image again
    assert wait_until(lambda: "already stored with the same content" in node.log(), 10)
    time.sleep(2)  # a second analysis would have started by now
    assert analysed_count() == 1
    assert node.studies()[0]["state"] == "analysed"

    asked = _cli(node, "reprocess", study_uid)
    assert asked.returncode == 0, asked.stderr
    assert wait_until(lambda: analysed_count() == 2, timeout=60), node.log()
