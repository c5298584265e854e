"""The fast PS3.10 writer (workers.encode.part10) and dataset copies (workers.encode.copies).

The writer must produce exactly the bytes pydicom writes; copies must be independent of
their original and keep highdicom's content item classes and name index.
"""

from __future__ import annotations

import copy
import warnings
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from tests.unit._synthetic import corpus_file, crude_display, make_analysis, make_dx_chest
from workers.encode.copies import clone
from workers.encode.part10 import to_part10
from workers.encode.sc import build_heatmap_sc
from workers.encode.sr import build_measurement_report
from workers.results import encode_notice, to_bytes


def _pydicom_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    copy.deepcopy(dataset).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sr(source: Dataset) -> Dataset:
    analysis = make_analysis(
        source.SOPInstanceUID, demo=True, rows=int(source.Rows), columns=int(source.Columns)
    )
    return build_measurement_report(
        source,
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=901,
    )


def _sc(source: Dataset) -> Dataset:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    heatmap = np.linspace(0.0, 1.0, int(source.Rows) * int(source.Columns), dtype=np.float32)
    return build_heatmap_sc(
        source,
        crude_display(source),
        heatmap.reshape(int(source.Rows), int(source.Columns)),
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=902,
    )


def _latin1_source() -> Dataset:
    source = make_dx_chest()
    source.PatientName = "Müller^Jürgen"
    source.StudyDescription = "Thorax p.a. (Übersicht)"
    source.ReferringPhysicianName = "Dr. Ærø"
    return source


def _utf8_source() -> Dataset:
    source = make_dx_chest()
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "Wang^XiaoDong=王^小東"
    source.StudyDescription = "胸部 X 線"
    source.OtherPatientIDsSequence = Sequence([Dataset()])
    source.OtherPatientIDsSequence[0].PatientID = "ÄÖ-1"
    source.OtherPatientIDsSequence[0].TypeOfPatientID = "TEXT"
    return source


def _japanese_source() -> Dataset:
    source = make_dx_chest()
    source.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    source.PatientName = "Yamada^Tarou=山田^太郎"
    return source


@pytest.mark.parametrize(
    "build",
    [
        lambda: _sr(make_dx_chest()),
        lambda: _sc(make_dx_chest()),
        lambda: _sr(_latin1_source()),
        lambda: _sc(_latin1_source()),
        lambda: _sr(_utf8_source()),
        lambda: _sr(_japanese_source()),
        lambda: encode_notice([make_dx_chest(), make_dx_chest()], "UNDECODABLE", "bad pixels"),
    ],
    ids=["sr", "sc", "sr-latin1", "sc-latin1", "sr-utf8", "sr-iso2022", "notice"],
)
def test_writes_what_pydicom_writes(build: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom on unusual names: not the point here
        dataset = build()  # type: ignore[operator]
    expected = _pydicom_bytes(dataset)
    assert to_part10(dataset) == expected
    assert to_bytes(dataset) == expected


def test_results_of_a_real_cr_are_written_as_pydicom_writes_them() -> None:
    """The header of a file read from disk (lazily decoded items included) goes into both."""
    source = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    for dataset in (_sr(source), _sc(source)):
        assert to_part10(dataset) == _pydicom_bytes(dataset)


def _odd_values() -> Dataset:
    """Values the writer has to encode like pydicom: empty, multiple, odd lengths, numbers."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = str(generate_uid())
    ds.ImageType = ["DERIVED", "SECONDARY", "X"]
    ds.PatientName = ""
    ds.PatientID = "ODD"
    ds.AccessionNumber = None
    ds.StudyDescription = "odd"
    ds.ImagePositionPatient = ["1.5", "-0.25", "1e3"]
    ds.PixelSpacing = [0.5, 1 / 3]
    ds.InstanceNumber = "7"
    ds.ReferencedFrameNumber = [1, 2, 3]
    ds.Rows, ds.Columns = 3, 5
    ds.RealWorldValueLUTData = [0.5, 1.25]
    ds.RecommendedDisplayFrameRateInFloat = 2.5
    ds.StudyDate = "20240102"
    ds.ContentTime = "101010.5"
    ds.AcquisitionDateTime = "20240102101010"
    ds.TextValue = "x" * 70001  # UT: 4-byte length
    ds.ContentSequence = Sequence([Dataset(), Dataset()])
    ds.ContentSequence[0].TextValue = "odd"
    ds.ContentSequence[1].ContentSequence = Sequence()
    ds.ReferencedSeriesSequence = Sequence()
    ds.add_new(0x00091010, "LO", "private")  # no creator: pydicom writes it anyway
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_odd_values_are_written_as_pydicom_writes_them() -> None:
    dataset = _odd_values()
    assert to_part10(dataset) == _pydicom_bytes(dataset)


def test_undefined_lengths_and_too_long_values_are_written_as_pydicom_writes_them() -> None:
    dataset = _odd_values()
    dataset["ContentSequence"].is_undefined_length = True
    dataset.ContentSequence[0].is_undefined_length_sequence_item = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.StudyDescription = "y" * 70001  # LO over 64 KiB: pydicom writes UN, and warns
        expected = _pydicom_bytes(dataset)
        assert to_part10(dataset) == expected


def test_other_transfer_syntaxes_and_read_files_go_to_pydicom(tmp_path: Path) -> None:
    implicit = _odd_values()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    assert to_part10(implicit) == _pydicom_bytes(implicit)
    path = tmp_path / "odd.dcm"
    path.write_bytes(to_part10(_odd_values()))
    read = pydicom.dcmread(path)
    assert to_part10(read) == _pydicom_bytes(read)


# --- copies ---------------------------------------------------------------------------


def test_a_copy_is_equal_and_independent() -> None:
    sr = _sr(make_dx_chest())
    twin = clone(sr)
    assert type(twin) is type(sr)
    assert to_part10(twin) == to_part10(sr)
    (index, item) = next(
        (i, item) for i, item in enumerate(twin.ContentSequence) if "ContentSequence" in item
    )
    item.ContentSequence.append(
        hd.sr.TextContentItem(
            name=hd.sr.CodedConcept("121106", "DCM", "Comment"),
            value="only in the copy",
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    twin.PatientID = "CHANGED"
    twin.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator = "CHANGED"
    assert sr.PatientID != "CHANGED"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator != "CHANGED"
    assert len(sr.ContentSequence[index].ContentSequence) + 1 == len(item.ContentSequence)


def test_a_copy_indexes_its_own_content_items() -> None:
    """highdicom finds content items by name through an index the copy must rebuild."""
    sr = _sr(make_dx_chest())
    twin = clone(sr)
    measurements = twin.ContentSequence
    name = hd.sr.CodedConcept("126010", "DCM", "Imaging Measurements")
    (found,) = measurements.find(name)
    assert any(found is item for item in measurements)
    assert not any(found is item for item in sr.ContentSequence)


def test_a_copy_replaces_placeholder_uids() -> None:
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    ds.ReferencedSOPSequence = Sequence([Dataset()])
    ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "2.25.1"
    ds.RelatedGeneralSOPClassUID = ["2.25.1", "1.2.3"]
    ds.StudyDescription = "2.25.1"  # not a UID: left alone
    twin = clone(ds, {"2.25.1": "1.2.840.99"})
    assert twin.SOPInstanceUID == "1.2.840.99"
    assert twin.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.840.99"
    assert list(twin.RelatedGeneralSOPClassUID) == ["1.2.840.99", "1.2.3"]
    assert twin.StudyDescription == "2.25.1"
    assert ds.SOPInstanceUID == "2.25.1"
    assert ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "2.25.1"
