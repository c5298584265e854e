"""Results by STOW-RS to a real archive: Orthanc 1.10 with its DICOMweb plugin (issue 15).

cxr-node's only destination is Orthanc's STOW-RS URL (kind ``dicomweb``, basic authentication).
Orthanc is stopped when the node has its results and started again 30 s later; it then holds
the SR and the SC in the radiograph's study, each in a new series, and the node's ledger says
delivered. Orthanc listens on every interface, so the scenario runs in a private network
namespace (``tests/integration/stow_scenario.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.conftest import REPO
from tests.integration.stow_scenario import DICOMWEB_PLUGIN
from tests.integration.test_orthanc_interop import CHEST, _instances, _logs, _unshare

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 30


def test_results_reach_orthanc_by_stow_rs_through_a_30_second_outage(
    tmp_path: Path, models_dir: Path, corpus: Path
) -> None:
    for needed in ("/usr/sbin/Orthanc", "/usr/bin/storescu", DICOMWEB_PLUGIN):
        if not Path(needed).exists():
            pytest.skip(
                f"{needed} not installed (Debian packages orthanc, orthanc-dicomweb, dcmtk)"
            )
    image = corpus / CHEST
    source = pydicom.dcmread(image, stop_before_pixels=True)
    workdir = tmp_path / "stow"
    scenario = subprocess.run(
        [
            *_unshare(),
            sys.executable,
            "-m",
            "tests.integration.stow_scenario",
            "--models",
            str(models_dir),
            "--image",
            str(image),
            "--workdir",
            str(workdir),
            "--outage",
            str(OUTAGE_SECONDS),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert scenario.returncode == 0, f"{scenario.stderr}\n{_logs(workdir)}"
    verdict = json.loads(scenario.stdout.strip().splitlines()[-1])
    context = f"{json.dumps(verdict, indent=1)}\n{_logs(workdir)}"
    assert verdict["error"] is None, context
    assert verdict["outage_seconds"] >= OUTAGE_SECONDS, context
    assert verdict["attempts_while_down"] >= 2, context  # it kept trying, with backoff
    (study,) = verdict["studies"]
    assert study["StudyInstanceUID"] == source.StudyInstanceUID, context
    instances = _instances(study)
    by_class = {instance["SOPClassUID"]: instance for instance in instances}
    assert len(instances) == 3, context
    assert set(by_class) == {source.SOPClassUID, Comprehensive3DSRStorage,
                             SecondaryCaptureImageStorage}, context  # fmt: skip
    for kind in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        assert by_class[kind]["SeriesInstanceUID"] != source.SeriesInstanceUID, context
        assert by_class[kind]["metadata"].get("Origin") == "Plugins", context  # by STOW-RS
    (node_study,) = verdict["node_studies"]
    assert node_study["state"] == "delivered", context
    assert node_study["deliveries"]["archive"]["state"] == "delivered", context
