"""For every frontal chest radiograph of the corpus, the results as a PACS receives them: the
TID 1500 SR and the heatmap SC validate with dciodvfy (zero errors), dsrdump reads the SR,
highdicom reads it back, and both reference the source image. The malformed one gets a
"not analysed" SR that is just as valid."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from cxr_node.errors import RejectedInput
from tests.dicom_checks import dciodvfy_errors, dsrdump
from tests.integration.conftest import inventory
from workers.analysis import Analyzer
from workers.offline import read_source
from workers.results import encode_notice, encode_results, write_plain

pytestmark = pytest.mark.integration


def _evidence_uids(sr: pydicom.Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def _ai_equipment(result: pydicom.Dataset) -> pydicom.Dataset:
    items = [
        item
        for item in result.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
        and "DeviceUID" in item
    ]
    assert len(items) == 1
    return items[0]


def test_results_of_every_frontal_chest_file_are_valid_dicom(
    corpus: Path, analyzer: Analyzer, tmp_path: Path
) -> None:
    rows = inventory(corpus, "CHEST-FRONTAL (accept")
    assert len(rows) >= 60
    problems: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        source = read_source(corpus / row["file"])
        analysed = analyzer.analyse(source)
        folder = tmp_path / str(index)
        written = {kind: write_plain(folder, ds) for kind, ds in encode_results(source, analysed)}
        for kind, path in written.items():
            errors = dciodvfy_errors(path)
            if errors:
                problems[f"{row['file']} {kind}"] = errors
        sr = pydicom.dcmread(written["sr"])
        sc = pydicom.dcmread(written["sc"])
        assert sr.SOPClassUID == Comprehensive3DSRStorage
        assert sc.SOPClassUID == SecondaryCaptureImageStorage
        dump = dsrdump(written["sr"])
        assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout, row["file"]
        report = hd.sr.Comprehensive3DSR.from_dataset(sr)
        groups = report.content.get_image_measurement_groups()
        assert groups, row["file"]
        assert _evidence_uids(sr) == {str(source.SOPInstanceUID)}
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        for result in (sr, sc):
            assert result.StudyInstanceUID == source.StudyInstanceUID
            equipment = _ai_equipment(result)
            assert equipment.DeviceUID == analysed.analysis.model.device_uid
            assert equipment.SoftwareVersions == analysed.analysis.model.version
        assert "not for diagnostic use" in sr.SeriesDescription
        assert "DEMO" in sr.SeriesDescription and "DEMO" in sc.SeriesDescription
    assert problems == {}


# pydicom warns when it reads the source's 56-character Accession Number (SH allows 16).
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")
def test_the_malformed_frontal_chest_gets_a_valid_not_analysed_report(
    corpus: Path, analyzer: Analyzer, tmp_path: Path
) -> None:
    rows = inventory(corpus, "CHEST-FRONTAL + MALFORMED")
    assert rows
    for row in rows:
        source = pydicom.dcmread(corpus / row["file"])
        with pytest.raises(RejectedInput) as caught:
            analyzer.analyse(source)
        notice = encode_notice([source], caught.value.reason_code, "pixel data cannot be decoded")
        path = write_plain(tmp_path, notice)
        assert dciodvfy_errors(path) == []
        dump = dsrdump(path)
        assert dump.returncode == 0
        assert "Not done" in dump.stdout and "UNDECODABLE" in dump.stdout
        assert _evidence_uids(notice) == {str(source.SOPInstanceUID)}
        assert notice.StudyInstanceUID == source.StudyInstanceUID
        assert hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path)) is not None
        # the same study, image and reason give the same notice (a re-send is not a duplicate)
        again = encode_notice([source], caught.value.reason_code, "pixel data cannot be decoded")
        assert again.SOPInstanceUID == notice.SOPInstanceUID
