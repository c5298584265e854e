"""Interop with a real PACS: Orthanc auto-routes a chest radiograph to cxr-node, gets results back.

Proves, against Orthanc 1.10 (not a test double): DCMTK storescu stores a CR chest radiograph in
Orthanc; Orthanc's Lua ``OnStoredInstance`` rule sends it to cxr-node by C-STORE; cxr-node
analyses it and C-STOREs its TID 1500 SR (Comprehensive 3D SR) and its Secondary Capture heatmap
to Orthanc, which accepts both and files them, by Orthanc's own REST API, as two new series of the
radiograph's study, and does not route them back. Orthanc listens on every interface, so the whole
scenario runs in a private network namespace (``tests/integration/orthanc_scenario.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.conftest import REPO
from tests.integration.orthanc_scenario import NODE_AET, ORTHANC

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"  # the CHEST-FRONTAL image test_roundtrip.py uses
NAMESPACE = ("--net", "--pid", "--fork", "--kill-child")


def _unshare() -> list[str]:
    """An ``unshare`` command line giving a private network and PID namespace, or skip."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) not installed: Orthanc cannot be isolated")
    for extra in ((), ("--map-root-user",)):
        command = [unshare, *NAMESPACE, *extra]
        probe = subprocess.run([*command, "true"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return command
    pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")


def _logs(workdir: Path) -> str:
    parts = []
    for name in ("orthanc.log", "node/serve.log"):
        path = workdir / name
        text = path.read_text(errors="replace") if path.exists() else "(none)"
        parts.append(f"----- {name} (last 6000 characters) -----\n{text[-6000:]}")
    return "\n".join(parts)


def _instances(study: dict[str, Any]) -> list[dict[str, Any]]:
    return [instance for series in study["series"] for instance in series["instances"]]


def test_orthanc_routes_radiograph_and_files_sr_and_sc_in_its_study(
    tmp_path: Path, models_dir: Path, corpus: Path
) -> None:
    for tool in (ORTHANC, "/usr/bin/storescu"):
        if not Path(tool).exists():
            pytest.skip(f"{tool} not installed (Debian packages orthanc, dcmtk)")
    image = corpus / CHEST
    if not image.is_file():
        pytest.skip(f"{CHEST} is not in the corpus")
    unshare = _unshare()
    source = pydicom.dcmread(image, stop_before_pixels=True)
    workdir = tmp_path / "scenario"

    scenario = subprocess.run(
        [
            *unshare,
            sys.executable,
            "-m",
            "tests.integration.orthanc_scenario",
            "--models",
            str(models_dir),
            "--image",
            str(image),
            "--workdir",
            str(workdir),
            "--timeout",
            "60",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert scenario.returncode == 0, f"{scenario.stderr}\n{_logs(workdir)}"
    verdict = json.loads(scenario.stdout.strip().splitlines()[-1])
    context = f"{json.dumps(verdict, indent=1)}\n{_logs(workdir)}"
    assert verdict["error"] is None, context
    assert verdict["interfaces"] == ["lo"], context

    # One study in Orthanc: the radiograph's, holding the radiograph, the SR and the SC.
    assert len(verdict["studies"]) == 1, context
    study = verdict["studies"][0]
    assert study["StudyInstanceUID"] == source.StudyInstanceUID, context
    assert len(study["series"]) == 3, context
    instances = _instances(study)
    assert len(instances) == 3, context
    for instance in instances:
        assert instance["StudyInstanceUID"] == source.StudyInstanceUID, context
        assert instance["SOPClassUID"] == instance["metadata"]["SopClassUid"], context
    by_class = {instance["SOPClassUID"]: instance for instance in instances}
    assert set(by_class) == {
        source.SOPClassUID,
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
    }, context

    radiograph = by_class[source.SOPClassUID]
    assert radiograph["SOPInstanceUID"] == source.SOPInstanceUID, context
    assert radiograph["metadata"]["RemoteAET"] == "MODALITY", context
    modalities = {series["Modality"] for series in study["series"]}
    assert {source.Modality, "SR"} <= modalities, context
    for result in (by_class[Comprehensive3DSRStorage], by_class[SecondaryCaptureImageStorage]):
        assert result["metadata"]["RemoteAET"] == NODE_AET, context  # sent by cxr-node
        assert result["SeriesInstanceUID"] != source.SeriesInstanceUID, context
    sr_series = next(s for s in study["series"] if s["Modality"] == "SR")
    assert sr_series["instances"][0]["SOPClassUID"] == Comprehensive3DSRStorage, context

    # Orthanc's Lua rule routed the radiograph once, and cxr-node delivered to Orthanc.
    lua_jobs = [job for job in verdict["jobs"] if job["Content"].get("Description") == "Lua"]
    assert [(job["State"], job["Content"]["CountOperations"]) for job in lua_jobs] == [
        ("Success", 1)
    ], context
    node_studies = verdict["node_studies"]
    assert [row["state"] for row in node_studies] == ["delivered"], context
