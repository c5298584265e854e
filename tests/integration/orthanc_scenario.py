"""The Orthanc <-> cxr-node scenario, run inside a private network (and PID) namespace.

Orthanc 1.10 listens on every interface whatever its configuration says, so it only ever runs in a
network namespace of its own, with loopback up and nothing else, together with everything that
talks to it. Started by ``tests/integration/test_orthanc_interop.py`` as::

    unshare --net --pid --fork --kill-child python -m tests.integration.orthanc_scenario ...

it does the whole scenario in there: a real Orthanc PACS with a Lua auto-routing rule, a real
``cxr-node serve`` whose destination is that Orthanc, and DCMTK storescu sending one chest
radiograph to Orthanc. It then prints one JSON object on stdout (the verdict): what Orthanc's REST
API says it holds, its routing jobs, and the node's ledger. It asserts nothing itself; the test
does. Being PID 1 of its namespace, its death takes Orthanc and the node with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import wait_for_port, wait_until
from tests.integration.node import NodeProcess, storescu

ORTHANC = "/usr/sbin/Orthanc"
ORTHANC_AET = "ORTHANC"
NODE_AET = "CXR_NODE"
MODALITY_NAME = "cxr"
# The namespace is empty, so the well-known ports are free; fixed ports keep the logs readable.
ORTHANC_DICOM_PORT = 4242
ORTHANC_HTTP_PORT = 8042
NODE_PORT = 11112

# Auto-routing as a site would write it: every radiograph a modality stores goes to the AI node,
# never what the node sends back (that would loop: the node would be offered its own results).
LUA_ROUTING = f"""\
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if origin['RequestOrigin'] == 'DicomProtocol' and origin['RemoteAet'] ~= '{NODE_AET}'
     and (modality == 'CR' or modality == 'DX') then
    SendToModality(instanceId, '{MODALITY_NAME}')
  end
end
"""

# No proxy: everything is on this namespace's loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def orthanc_config(workdir: Path, lua: Path) -> dict[str, Any]:
    """A minimal Orthanc configuration: storage in ``workdir``, cxr-node as modality ``cxr``."""
    return {
        "Name": "cxr-node-interop",
        "StorageDirectory": str(workdir / "orthanc-storage"),
        "IndexDirectory": str(workdir / "orthanc-index"),
        "StorageCompression": False,
        "Plugins": [],
        "LuaScripts": [str(lua)],
        "HttpServerEnabled": True,
        "HttpPort": ORTHANC_HTTP_PORT,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": ORTHANC_DICOM_PORT,
        # Stricter than Orthanc's default: the node must call us by our AE title.
        "DicomCheckCalledAet": True,
        # The modality (storescu, AE MODALITY) is not declared; the node is.
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {MODALITY_NAME: [NODE_AET, "127.0.0.1", NODE_PORT]},
        "DicomAssociationCloseDelay": 0,
        "SaveJobs": False,
    }


def rest(path: str) -> Any:
    """GET ``path`` from Orthanc's REST API, parsed; None when Orthanc does not answer (yet)."""
    try:
        with _HTTP.open(f"http://127.0.0.1:{ORTHANC_HTTP_PORT}{path}", timeout=5) as answer:
            return json.loads(answer.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def orthanc_contents() -> list[dict[str, Any]]:
    """Every study Orthanc holds, with its series and instances, as its REST API describes them."""
    studies = []
    for study_id in rest("/studies") or []:
        study = rest(f"/studies/{study_id}")
        series_list = []
        for series in rest(f"/studies/{study_id}/series") or []:
            instances = []
            for instance_id in series["Instances"]:
                tags = rest(f"/instances/{instance_id}/simplified-tags") or {}
                metadata = rest(f"/instances/{instance_id}/metadata?expand") or {}
                instances.append(
                    {
                        "id": instance_id,
                        "SOPClassUID": tags.get("SOPClassUID"),
                        "SOPInstanceUID": tags.get("SOPInstanceUID"),
                        "StudyInstanceUID": tags.get("StudyInstanceUID"),
                        "SeriesInstanceUID": tags.get("SeriesInstanceUID"),
                        "metadata": metadata,
                    }
                )
            series_list.append(
                {
                    "id": series["ID"],
                    "Modality": series["MainDicomTags"].get("Modality"),
                    "SeriesInstanceUID": series["MainDicomTags"].get("SeriesInstanceUID"),
                    "SeriesDescription": series["MainDicomTags"].get("SeriesDescription"),
                    "instances": instances,
                }
            )
        studies.append(
            {
                "id": study_id,
                "StudyInstanceUID": (study or {}).get("MainDicomTags", {}).get("StudyInstanceUID"),
                "series": series_list,
            }
        )
    return studies


def instance_count() -> int:
    statistics = rest("/statistics") or {}
    return int(statistics.get("CountInstances", 0))


def run(models: Path, image: Path, workdir: Path, timeout: float) -> dict[str, Any]:
    """Do the scenario; the verdict holds what was observed, and ``error`` what went wrong."""
    started = time.monotonic()
    verdict: dict[str, Any] = {"error": None, "interfaces": [], "studies": [], "jobs": []}
    ip = shutil.which("ip") or "/usr/sbin/ip"
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    verdict["interfaces"] = [name for _, name in socket.if_nameindex()]
    if verdict["interfaces"] != ["lo"]:
        verdict["error"] = "not in a private network namespace: Orthanc would listen outside"
        return verdict

    lua = workdir / "route-to-cxr-node.lua"
    lua.write_text(LUA_ROUTING)
    config = workdir / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(workdir, lua), indent=2))
    node = NodeProcess(
        workdir / "node",
        models,
        "--ae-title",
        NODE_AET,
        "--destination",
        f"{ORTHANC_AET}@127.0.0.1:{ORTHANC_DICOM_PORT}",
        "--quiet-seconds",
        "0.5",
    )
    node.port = NODE_PORT
    orthanc: subprocess.Popen[bytes] | None = None
    try:
        with (workdir / "orthanc.log").open("wb") as log:
            orthanc = subprocess.Popen(
                [ORTHANC, "--verbose", str(config)], stdout=log, stderr=log, cwd=workdir
            )
        if not wait_until(lambda: rest("/system") is not None, timeout=30, interval=0.1):
            verdict["error"] = "Orthanc's REST API did not come up"
            return verdict
        wait_for_port(ORTHANC_DICOM_PORT, timeout=10)
        verdict["orthanc_version"] = rest("/system")["Version"]
        node.start()

        sent = storescu(ORTHANC_DICOM_PORT, image, called=ORTHANC_AET)
        if sent.returncode != 0:
            verdict["error"] = f"storescu to Orthanc failed: {sent.stdout}{sent.stderr}"
            return verdict
        remaining = timeout - (time.monotonic() - started)
        if not wait_until(lambda: instance_count() >= 3, timeout=remaining, interval=0.2):
            verdict["error"] = f"Orthanc holds {instance_count()} instances, expected 3"
        else:  # the node's ledger says delivered once its association is released
            wait_until(
                lambda: [s["state"] for s in node.studies()] == ["delivered"],
                timeout=15,
                interval=0.3,
            )
        verdict["node_studies"] = node.studies()
        verdict["studies"] = orthanc_contents()
        verdict["jobs"] = rest("/jobs?expand") or []
        return verdict
    except Exception as error:
        verdict["error"] = f"{type(error).__name__}: {error}"
        return verdict
    finally:
        if orthanc is not None:
            orthanc.terminate()  # Orthanc takes seconds to stop: let it while the node stops
        node.stop()
        if orthanc is not None:
            try:
                orthanc.wait(15)
            except subprocess.TimeoutExpired:
                orthanc.kill()
                orthanc.wait(5)
        verdict["seconds"] = round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="demo model bundles")
    parser.add_argument("--image", type=Path, required=True, help="a chest radiograph")
    parser.add_argument("--workdir", type=Path, required=True, help="config, storage, logs")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the results")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    verdict = run(args.models, args.image, args.workdir, args.timeout)
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
