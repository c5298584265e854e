"""A bundle trained by ``cxr-node models train`` served by ``cxr-node serve`` as it is: its SR
carries its own findings and no DEMO text (issue 14). The training data are the synthetic task
(planted patterns), so the findings mean nothing clinically."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from tests.conftest import StoreSCP, require_tool, wait_until
from tests.dicom_checks import dciodvfy_errors
from tests.integration.node import NodeProcess, storescu
from tests.training import synthetic_task, train_tiny
from workers.labels import code_for
from workers.training.synthetic import SYNTHETIC_LABELS

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding one bundle trained for two epochs on the synthetic task."""
    task = synthetic_task(tmp_path_factory.mktemp("task"), images=120)
    models = tmp_path_factory.mktemp("trained-models")
    train_tiny(task, models / "site-model", epochs=2)
    return models


def _meanings(dataset: Dataset) -> Iterator[str]:
    """Every code meaning and text value in an SR's content tree."""
    for item in dataset.get("ContentSequence", []):
        for sequence in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(sequence, []):
                yield str(code.get("CodeMeaning", ""))
        if "TextValue" in item:
            yield str(item.TextValue)
        yield from _meanings(item)


def test_a_trained_bundle_is_served_and_its_sr_says_its_own_findings_and_no_demo(
    tmp_path: Path,
    trained_models: Path,
    storescp: StoreSCP,
    corpus: Path,
    nodes: list[NodeProcess],
) -> None:
    require_tool("/usr/bin/storescu")
    node = NodeProcess(
        tmp_path / "node",
        trained_models,
        "--destination",
        storescp.address,
        "--quiet-seconds",
        "0.5",
        env={"CXR_NODE_REQUIRE_KNOWN_SOURCES": "false"},
    ).start()
    nodes.append(node)
    sent = storescu(node.port, corpus / CHEST)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), node.log()
    reports = [
        path
        for path in storescp.files()
        if pydicom.dcmread(path).SOPClassUID == Comprehensive3DSRStorage
    ]
    assert len(reports) == 1
    report = pydicom.dcmread(reports[0])
    meanings = set(_meanings(report))
    for label in SYNTHETIC_LABELS:
        assert code_for(label).meaning in meanings, label
    for path in storescp.files():
        result = pydicom.dcmread(path)
        assert "DEMO" not in str(result.get("SeriesDescription", ""))
        assert dciodvfy_errors(path) == [], path.name
    assert not any("DEMO" in text or "NOT TRAINED" in text for text in meanings)
    assert any("AI-generated result" in t and "not a diagnosis" in t for t in meanings)
    assert "not for diagnostic use" in str(report.SeriesDescription)
