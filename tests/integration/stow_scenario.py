"""The STOW-RS scenario: cxr-node sends its results to Orthanc's DICOMweb plugin, through an
outage of Orthanc, run inside a private network (and PID) namespace like orthanc_scenario.

Started by ``tests/integration/test_dicomweb_delivery.py`` as::

    unshare --net --pid --fork --kill-child python -m tests.integration.stow_scenario ...

Orthanc (with ``libOrthancDicomWeb``) first receives the chest radiograph from DCMTK storescu,
then stops; the radiograph also goes to a ``cxr-node serve`` whose only destination is Orthanc's
STOW-RS URL (kind ``dicomweb``, basic authentication). The node analyses it and cannot deliver;
``--outage`` seconds after it stopped, Orthanc starts again on the same storage. The verdict
(JSON on stdout) says what Orthanc holds at the end and what the node's ledger says.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import wait_for_port, wait_until
from tests.integration import orthanc_scenario as orthanc
from tests.integration.node import NodeProcess, storescu

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "cxr", "stow-secret"
NODE_PORT = 11112


def _config(workdir: Path) -> Path:
    config = orthanc.orthanc_config(workdir, workdir / "none.lua")
    config |= {
        "LuaScripts": [],
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _start_orthanc(config: Path, workdir: Path) -> subprocess.Popen[bytes]:
    with (workdir / "orthanc.log").open("ab") as log:
        return subprocess.Popen(
            [orthanc.ORTHANC, "--verbose", str(config)], stdout=log, stderr=log, cwd=workdir
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _authorised_rest(path: str) -> Any:
    import base64
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{orthanc.ORTHANC_HTTP_PORT}{path}")
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with orthanc._HTTP.open(request, timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def run(models: Path, image: Path, workdir: Path, outage: float, timeout: float) -> dict[str, Any]:
    """Do the scenario; the verdict holds what was observed, and ``error`` what went wrong."""
    started = time.monotonic()
    verdict: dict[str, Any] = {"error": None, "studies": []}
    subprocess.run([shutil.which("ip") or "/usr/sbin/ip", "link", "set", "lo", "up"], check=True)
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        verdict["error"] = "not in a private network namespace: Orthanc would listen outside"
        return verdict
    orthanc.rest = _authorised_rest  # the REST helpers of orthanc_scenario, with our password
    config = _config(workdir)
    node_config = workdir / "node.yaml"
    node_config.write_text(
        yaml.safe_dump(
            {
                "destinations": [
                    {
                        "name": "archive",
                        "kind": "dicomweb",
                        "url": f"http://127.0.0.1:{orthanc.ORTHANC_HTTP_PORT}/dicom-web",
                        "username": USER,
                        "password": PASSWORD,
                        "timeout_seconds": 5,
                    }
                ],
                "delivery_retry_initial_seconds": 1,
                "delivery_retry_max_seconds": 4,
                "require_known_sources": False,
            }
        )
    )
    node = NodeProcess(workdir / "node", models, "--config", str(node_config), "--quiet-seconds",
                       "0.5")  # fmt: skip
    node.port = NODE_PORT
    server: subprocess.Popen[bytes] | None = None
    try:
        server = _start_orthanc(config, workdir)
        if not wait_until(lambda: orthanc.rest("/system") is not None, timeout=30, interval=0.1):
            verdict["error"] = "Orthanc's REST API did not come up"
            return verdict
        wait_for_port(orthanc.ORTHANC_DICOM_PORT, timeout=10)
        verdict["orthanc_version"] = orthanc.rest("/system")["Version"]
        sent = storescu(orthanc.ORTHANC_DICOM_PORT, image, called=orthanc.ORTHANC_AET)
        if sent.returncode != 0 or orthanc.instance_count() != 1:
            verdict["error"] = f"the radiograph did not reach Orthanc: {sent.stderr}"
            return verdict
        _stop(server)
        down_at = time.monotonic()
        node.start()
        if storescu(NODE_PORT, image).returncode != 0:
            verdict["error"] = "storescu to the node failed"
            return verdict
        if not wait_until(lambda: _attempts(node) >= 1, timeout=120, interval=0.5):
            verdict["error"] = "the node never tried to deliver"
            return verdict
        time.sleep(outage)  # down for ``outage`` seconds from the node's first failed attempt
        verdict["attempts_while_down"] = _attempts(node)
        verdict["outage_seconds"] = round(time.monotonic() - down_at, 1)
        server = _start_orthanc(config, workdir)
        remaining = max(10.0, timeout - (time.monotonic() - started))
        if not wait_until(lambda: orthanc.instance_count() >= 3, timeout=remaining, interval=0.3):
            verdict["error"] = f"Orthanc holds {orthanc.instance_count()} instances, expected 3"
        wait_until(
            lambda: [s["state"] for s in node.studies()] == ["delivered"], timeout=15, interval=0.3
        )
        verdict["node_studies"] = node.studies()
        verdict["studies"] = orthanc.orthanc_contents()
        return verdict
    except Exception as error:
        verdict["error"] = f"{type(error).__name__}: {error}"
        return verdict
    finally:
        node.stop()
        if server is not None and server.poll() is None:
            _stop(server)
        verdict["seconds"] = round(time.monotonic() - started, 1)


def _attempts(node: NodeProcess) -> int:
    studies = node.studies()
    deliveries = studies[0].get("deliveries", {}) if studies else {}
    archive = deliveries.get("archive") if isinstance(deliveries, dict) else None
    return int(archive.get("attempts", 0)) if isinstance(archive, dict) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.models, args.image, args.workdir, args.outage, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
