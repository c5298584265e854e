"""Hostile inputs through ``cxr-node analyze`` (workers.offline): one file's failure, expected or
not, never costs the other files of the same call. Synthetic inputs only."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset

from cxr_node.settings import Settings, load_settings
from tests.dicom_checks import dciodvfy_errors
from tests.unit._synthetic import make_analysis, make_dx_chest
from workers import offline, pixels
from workers.analysis import AnalysedImage
from workers.previews import to_uint8


class StubAnalyzer:
    """The real pixel pipeline, a made-up analysis (no network needed); a source whose Study
    Description says BUG raises an unexpected exception, as a bug would."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def analyse(self, dataset: Dataset) -> AnalysedImage:
        image = pixels.displayed_image(dataset)
        if str(dataset.get("StudyDescription", "")) == "BUG":
            raise KeyError(str(dataset.PatientName))  # the message quotes a header value
        analysis = make_analysis(
            str(dataset.SOPInstanceUID), demo=True, rows=image.shape[0], columns=image.shape[1]
        )
        heatmap = np.zeros(image.shape, dtype=np.float32)
        heatmap[10:40, 10:40] = 1.0
        return AnalysedImage(
            analysis=analysis,
            picture=to_uint8(image),
            source_shape=(image.shape[0], image.shape[1]),
            heatmap=heatmap,
        )


@pytest.fixture
def batch(tmp_path: Path) -> list[Path]:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00\x01not a dicom file at all" * 40)
    broken = make_dx_chest()
    broken.PixelData = broken.PixelData[:1000]  # truncated: cannot be decoded
    broken_path = tmp_path / "broken.dcm"
    broken.save_as(broken_path, enforce_file_format=True)
    bug = make_dx_chest()
    bug.StudyDescription = "BUG"
    bug_path = tmp_path / "bug.dcm"
    bug.save_as(bug_path, enforce_file_format=True)
    good_path = tmp_path / "good.dcm"
    make_dx_chest().save_as(good_path, enforce_file_format=True)
    return [garbage, broken_path, bug_path, good_path]


def _run(
    monkeypatch: pytest.MonkeyPatch,
    files: list[Path],
    out: Path | None,
    capsys: pytest.CaptureFixture[str],
) -> tuple[int, Any]:
    monkeypatch.setattr(offline, "Analyzer", StubAnalyzer)
    code = offline.analyze_files(load_settings(data_dir=Path("/nonexistent")), files, True, out)
    return code, json.loads(capsys.readouterr().out)


def test_each_file_gets_its_entry_whatever_the_others_do(
    batch: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="workers.offline"):
        code, reports = _run(monkeypatch, batch, tmp_path / "out", capsys)
    assert code == 0  # at least one file analysed
    assert isinstance(reports, list) and len(reports) == len(batch)
    assert [r["file"] for r in reports] == [str(p) for p in batch]
    garbage, broken, bug, good = reports
    assert garbage["reason_code"] == garbage["error"] == "UNREADABLE" and garbage["reason"]
    assert broken["reason_code"] == "UNDECODABLE" and broken["reason"]
    assert bug["reason_code"] == "INTERNAL_ERROR" and bug["reason"]
    assert "SYNTHETIC" not in bug["reason"]
    assert "error" not in good and len(good["findings"]) == 2
    assert len(good["written"]) == 2
    for path in good["written"]:
        assert dciodvfy_errors(Path(path)) == [], path
    # the unexpected one is logged with its frames, never its message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "KeyError (message withheld)" in logged and "test_hostile_analysis.py" in logged
    assert "SYNTHETIC^CHEST" not in logged


def test_exit_status_is_1_only_when_nothing_was_analysed(
    batch: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, reports = _run(monkeypatch, batch[:3], None, capsys)
    assert code == 1
    assert [r["reason_code"] for r in reports] == ["UNREADABLE", "UNDECODABLE", "INTERNAL_ERROR"]
