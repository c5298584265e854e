"""TID 1500 Comprehensive 3D SR encoder (workers.encode.sr) on a synthetic DX chest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import pydicom
import pydicom.config
import pydicom.datadict
import pydicom.tag
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cxr_node.jobs import CodedConcept as JobCode
from cxr_node.jobs import ImageAnalysis, Priority, Region
from tests.dicom_checks import dciodvfy, dciodvfy_errors, dsrdump
from tests.unit._synthetic import (
    corpus_file,
    make_analysis,
    make_dx_chest,
)
from workers.encode.header import header_view, restore_verbatim
from workers.encode.sr import (
    AI_CONTRIBUTION,
    COMMENT,
    MANUFACTURER,
    PRIORITY,
    PRIORITY_VALUES,
    PROCEDURE_CHEST_XR,
    _fast_report,
    ai_equipment,
    build_measurement_report,
    private_coding_schemes,
    series_description,
)
from workers.encode.sr import _report as _highdicom_report


def _build(source: pydicom.Dataset, analysis: ImageAnalysis) -> hd.sr.Comprehensive3DSR:
    return build_measurement_report(
        source,
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=901,
    )


def _reread(sr: hd.sr.Comprehensive3DSR) -> hd.sr.Comprehensive3DSR:
    """Through highdicom's reader, whose ``content`` is a MeasurementReport."""
    return hd.sr.Comprehensive3DSR.from_dataset(sr)


def _report(sr: pydicom.Dataset) -> hd.sr.MeasurementReport:
    """The TID 1500 content of a document read back by highdicom."""
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    content = sr.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _write(sr: pydicom.Dataset, tmp_path: Path) -> Path:
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def _items(items: pydicom.Sequence) -> Iterator[pydicom.Dataset]:
    """Every content item of a tree, depth first."""
    for item in items:
        yield item
        yield from _items(item.get("ContentSequence", []))


def _texts(sr: pydicom.Dataset, name: hd.sr.CodedConcept) -> list[str]:
    return [
        str(item.TextValue)
        for item in _items(sr.ContentSequence)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == name.value
    ]


@pytest.fixture
def source() -> pydicom.Dataset:
    return make_dx_chest()


@pytest.mark.parametrize("demo", [True, False])
def test_dciodvfy_reports_no_errors(source: pydicom.Dataset, tmp_path: Path, demo: bool) -> None:
    path = _write(_build(source, make_analysis(source.SOPInstanceUID, demo=demo)), tmp_path)
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors + warnings)


def test_dsrdump_reads_the_document(source: pydicom.Dataset, tmp_path: Path) -> None:
    path = _write(_build(source, make_analysis(source.SOPInstanceUID, demo=True)), tmp_path)
    run = dsrdump(path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Measurement Group" in run.stdout


def test_highdicom_reads_back_probabilities_and_evaluations(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    sr = hd.sr.srread(_write(_build(source, analysis), tmp_path))
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    (group,) = _report(sr).get_image_measurement_groups()
    for finding in analysis.findings:
        name = hd.sr.CodedConcept(finding.code.value, finding.code.scheme, finding.code.meaning)
        (measurement,) = group.get_measurements(name=name)
        assert measurement.value == pytest.approx(finding.probability, abs=1e-12)
        (evaluation,) = group.get_qualitative_evaluations(name=name)
        expected = codes.cid241.Present if finding.positive else codes.cid241.Absent
        assert evaluation.value == expected
    (priority,) = group.get_qualitative_evaluations(name=PRIORITY)
    assert priority.value == PRIORITY_VALUES[analysis.priority]


def test_awkward_probabilities_round_trip(source: pydicom.Dataset, tmp_path: Path) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    analysis.findings[1].probability = 1 / 3
    sr = hd.sr.srread(_write(_build(source, analysis), tmp_path))
    (group,) = _report(sr).get_image_measurement_groups()
    code = analysis.findings[1].code
    (measurement,) = group.get_measurements(
        name=hd.sr.CodedConcept(code.value, code.scheme, code.meaning)
    )
    assert measurement.value == pytest.approx(1 / 3, abs=1e-12)


def test_document_is_in_the_source_study_and_references_the_image(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    sr = hd.sr.srread(
        _write(_build(source, make_analysis(source.SOPInstanceUID, demo=True)), tmp_path)
    )
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == source.PatientID
    assert sr.PatientName == source.PatientName
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = evidence.ReferencedSeriesSequence[0]
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    (group,) = _report(sr).get_image_measurement_groups()
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    images = [item for item in _items(sr.ContentSequence) if item.ValueType == "IMAGE"]
    assert images
    for item in images:
        uid = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert uid == source.SOPInstanceUID


def test_flags_are_honest(source: pydicom.Dataset) -> None:
    sr = _build(source, make_analysis(source.SOPInstanceUID, demo=False))
    assert sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.PreliminaryFlag == "PRELIMINARY"


@pytest.mark.parametrize("demo", [True, False])
def test_ai_and_demo_wording(source: pydicom.Dataset, demo: bool) -> None:
    sr = _build(source, make_analysis(source.SOPInstanceUID, demo=demo))
    description = str(sr.SeriesDescription)
    assert len(description) <= 64
    assert "AI-generated" in description
    assert "not for diagnostic use" in description
    assert ("DEMO" in description) is demo
    texts = _texts(sr, COMMENT)
    assert len(texts) == 2  # TID 1501 row 12 in the image group, TID 1500 row 14
    for text in texts:
        assert "AI-generated" in text
        assert "not a diagnosis" in text
        assert ("DEMO MODEL - NOT TRAINED" in text) is demo


def test_series_descriptions_fit_lo() -> None:
    for demo in (True, False):
        for kind in ("results", "heatmap"):
            assert len(series_description(demo=demo, kind=kind)) <= 64


def test_region_group_for_positive_finding(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=True)
    sr = _reread(_build(source, analysis))
    (roi_group,) = _report(sr).get_planar_roi_measurement_groups()
    region = roi_group.roi
    assert region is not None
    assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = region.value
    assert points.shape == (5, 2)
    assert (points[0] == points[-1]).all()
    box = analysis.findings[0].region
    assert box is not None
    assert points[:, 0].min() == pytest.approx(box.x_min, abs=1e-3)
    assert points[:, 1].max() == pytest.approx(box.y_max, abs=1e-3)
    reference = region.ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (evaluation,) = roi_group.get_qualitative_evaluations()
    assert evaluation.value == codes.cid241.Present


def test_no_region_group_without_positive_region(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    analysis.findings[0].region = None
    sr = _reread(_build(source, analysis))
    assert _report(sr).get_planar_roi_measurement_groups() == []


def test_device_observer_and_algorithm(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    sr = _reread(_build(source, analysis))
    (context,) = _report(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = context.observer_identifying_attributes
    assert isinstance(attributes, hd.sr.DeviceObserverIdentifyingAttributes)
    assert attributes.uid == analysis.model.device_uid
    assert attributes.name == analysis.model.name
    items = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
        for item in _items(sr.ContentSequence)
        if item.ValueType == "TEXT"
    }
    assert items["Algorithm Name"] == analysis.model.name
    assert items["Algorithm Version"] == analysis.model.version
    assert sr.SoftwareVersions == analysis.model.version


def test_rejects_an_analysis_of_another_image(source: pydicom.Dataset) -> None:
    with pytest.raises(ValueError, match="source image"):
        _build(source, make_analysis(generate_uid(), demo=False))


def test_source_is_left_untouched(source: pydicom.Dataset) -> None:
    source.PatientName = "Anonymized"  # one component: highdicom would warn on it
    before = pydicom.Dataset(source)
    sr = _build(source, make_analysis(source.SOPInstanceUID, demo=False))
    assert source == before
    assert sr.PatientName == "Anonymized"


def test_sparse_header_still_validates(source: pydicom.Dataset, tmp_path: Path) -> None:
    """Real-world headers lack orientation, spacing and Type 2 patient/study data."""
    for keyword in ("PatientOrientation", "ImagerPixelSpacing", "PatientID", "StudyDate"):
        delattr(source, keyword)
    sr = _build(source, make_analysis(source.SOPInstanceUID, demo=False))
    assert "PatientID" in sr
    assert not sr.PatientID
    errors, warnings = dciodvfy(_write(sr, tmp_path))
    assert errors == [], "\n".join(errors + warnings)


def test_real_cr_chest_validates(tmp_path: Path) -> None:
    """A real MONOCHROME1 CR with a sparse header (no PatientID, orientation, spacing)."""
    source = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    analysis = make_analysis(
        source.SOPInstanceUID, demo=True, rows=source.Rows, columns=source.Columns
    )
    path = _write(_build(source, analysis), tmp_path)
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors + warnings)
    assert hd.sr.srread(path).StudyInstanceUID == source.StudyInstanceUID


def test_sloppy_dates_and_times_do_not_stop_the_report(tmp_path: Path) -> None:
    """Real headers carry '1970-01-31' or '10:11:12'; the SR empties them and stays valid."""
    source = make_dx_chest()
    for keyword, vr, value in (  # as a sloppy modality wrote them
        ("PatientBirthDate", "DA", "1970-01-31"),
        ("StudyDate", "DA", "1970"),
        ("StudyTime", "TM", "10:11:12"),
    ):
        tag = pydicom.tag.Tag(keyword)
        source[tag] = pydicom.DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)
    sr = _build(source, make_analysis(source.SOPInstanceUID, demo=True))
    assert sr.PatientBirthDate == ""
    assert sr.StudyDate == ""
    errors, _warnings = dciodvfy(_write(sr, tmp_path))
    assert errors == []


# --- the templated build is the tree highdicom builds directly ------------------------


def _encoded(item: pydicom.Dataset) -> bytes:
    """A dataset's elements as pydicom writes them (Explicit VR Little Endian)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, item)
    return buffer.getvalue()


def _variants(source: pydicom.Dataset) -> list[ImageAnalysis]:
    """Analyses that exercise every templated value: flags, regions, order, odd numbers."""
    uid = source.SOPInstanceUID
    rows, columns = int(source.Rows), int(source.Columns)
    demo = make_analysis(uid, demo=True, rows=rows, columns=columns)
    negative = make_analysis(uid, demo=False, rows=rows, columns=columns)
    negative.findings[0].positive = False
    negative.priority = Priority.ROUTINE
    crowded = make_analysis(uid, demo=False, rows=rows, columns=columns)
    effusion, pneumothorax = crowded.findings
    pneumothorax.positive, pneumothorax.probability = True, 0.999999
    pneumothorax.region = Region(x_min=-5.0, y_min=1.5, x_max=columns + 9.0, y_max=rows / 3)
    effusion.probability = 1 / 3
    third = effusion.model_copy(
        update={"label": "Nodule", "probability": 1e-7, "positive": False, "region": None}
    )
    third.code = JobCode(value="27925004", scheme="SCT", meaning="Nodule")
    crowded.findings.append(third)
    crowded.abnormality_score = 0.0
    crowded.priority = Priority.CRITICAL
    unlocated = make_analysis(uid, demo=True, rows=rows, columns=columns)
    unlocated.findings[0].region = None
    unlocated.abnormality_score = 1.0
    return [demo, negative, crowded, unlocated]


def _sources() -> list[pydicom.Dataset]:
    """DX with orientation and spacing (TID 1603), sparse, other sizes, a frame of reference."""
    full = make_dx_chest()
    sparse = make_dx_chest(rows=300, columns=200)
    del sparse.PatientOrientation, sparse.ImagerPixelSpacing
    framed = make_dx_chest(rows=128, columns=160)
    framed.FrameOfReferenceUID = generate_uid()
    framed.ImagerPixelSpacing = ["0.139", "0.1390"]
    return [full, sparse, framed, make_dx_chest(rows=64, columns=64)]


def test_templated_report_is_the_tree_highdicom_builds() -> None:
    for source in _sources():
        for analysis in _variants(source):
            sr_uid = str(generate_uid())
            fast = _fast_report(source, analysis, sr_uid)
            reference = _highdicom_report(source, analysis, sr_uid)[0]
            assert _encoded(fast) == _encoded(reference)
            assert type(fast) is type(reference)


def test_templated_report_of_a_real_cr_is_the_tree_highdicom_builds() -> None:
    source = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    for analysis in _variants(source):
        sr_uid = str(generate_uid())
        assert _encoded(_fast_report(source, analysis, sr_uid)) == _encoded(
            _highdicom_report(source, analysis, sr_uid)[0]
        )


_NOW = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def test_document_is_the_one_highdicom_builds_from_the_whole_tree(source: pydicom.Dataset) -> None:
    """comprehensive_sr hands highdicom the root without children; nothing else changes."""
    analysis = _variants(source)[2]
    series_uid, sop_uid = str(generate_uid()), str(generate_uid())
    sr = build_measurement_report(
        source, analysis, series_instance_uid=series_uid, sop_instance_uid=sop_uid, series_number=7
    )
    reference = hd.sr.Comprehensive3DSR(
        evidence=[header_view(source)],
        content=_highdicom_report(source, analysis, sop_uid),
        series_instance_uid=series_uid,
        series_number=7,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=[PROCEDURE_CHEST_XR],
        series_description=series_description(demo=False),
        manufacturer_model_name=analysis.model.name,
        software_versions=analysis.model.version,
        coding_schemes=private_coding_schemes(),
        contributing_equipment=[ai_equipment(analysis.model, AI_CONTRIBUTION)],
    )
    restore_verbatim(reference, source)
    for keyword in _NOW:  # the moment of creation differs
        setattr(sr, keyword, reference[keyword].value)
    for mine, theirs in zip(
        sr.ContributingEquipmentSequence, reference.ContributingEquipmentSequence, strict=True
    ):
        if "ContributionDateTime" in theirs:
            mine.ContributionDateTime = theirs.ContributionDateTime
    assert _encoded(sr) == _encoded(reference)
    assert _encoded(sr.content[0]) == _encoded(reference.content[0])


# --- hostile source values: never copied invalid into our results ------------------------------


def _raw_value(ds: pydicom.Dataset, keyword: str, vr: str, value: bytes) -> None:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


HOSTILE_VALUES: dict[str, list[tuple[str, str, bytes]]] = {
    "2MB-patient-name": [("PatientName", "PN", b"A" * 2_000_000)],
    "control-chars-in-PN": [("PatientName", "PN", b"DOE\x01\x07^JOHN")],
    "control-chars-in-LO": [("StudyDescription", "LO", b"CHEST\x00\x1bXX")],
    "long-PN": [("ReferringPhysicianName", "PN", b"X" * 500)],
    "multi-valued-SH": [("AccessionNumber", "SH", b"A1\\A2")],
    "multi-valued-LO": [("PatientID", "LO", b"P1\\P2")],
    "multi-valued-CS": [("PatientSex", "CS", b"M\\F ")],
    "65-char-UID": [("FrameOfReferenceUID", "UI", b"1." * 40 + b"1\x00")],
    "aux-UID": [("FrameOfReferenceUID", "UI", b"aux.1\x00")],
    "UID-with-leading-zero": [("FrameOfReferenceUID", "UI", b"1.02.3\x00")],
    "bad-CS": [("BodyPartExamined", "CS", b"chest\x01")],
    "bad-orientation": [("PatientOrientation", "CS", b"l\\F\\X\x01")],
    "charset-empty": [("SpecificCharacterSet", "CS", b"")],
    "charset-IR149-no-escape": [
        ("SpecificCharacterSet", "CS", b"ISO 2022 IR 149"),
        ("PatientName", "PN", b"\xc8\xab^\xb1\xe6"),
    ],
    "charset-multi-without-extensions": [
        ("SpecificCharacterSet", "CS", b"ISO_IR 100\\ISO_IR 144"),
        ("PatientName", "PN", b"M\xfcller^\xe9"),
    ],
    "charset-unknown": [
        ("SpecificCharacterSet", "CS", b"KLINGON"),
        ("PatientName", "PN", b"M\xfcller^J"),
    ],
    # 40 characters, 80 bytes in UTF-8: over LO's 64 as our results write it
    "LO-over-64-bytes-in-UTF-8": [
        ("SpecificCharacterSet", "CS", b"ISO_IR 100"),
        ("StudyDescription", "LO", b"\xe9" * 40),
    ],
    "referenced-study-empty-item": [
        # Referenced Study Sequence, one empty item (explicit length 0), undefined sequence length
        ("ReferencedStudySequence", "SQ", b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
    ],
    "code-item-without-meaning": [
        # Procedure Code Sequence: one item holding only Code Value "X1"
        (
            "ProcedureCodeSequence",
            "SQ",
            b"\xfe\xff\x00\xe0\x0e\x00\x00\x00\x08\x00\x00\x01SH\x02\x00X1",
        ),
    ],
}


_UNKNOWN_VR_ELEMENT = b"\x09\x00\x11\x10SH\x04\x00abcd"
"""(0009,1011), explicit VR SH, 4 bytes: turned into VR ``ZZ`` in the file's bytes."""


def _hostile_source(
    values: list[tuple[str, str, bytes]], *, delete: tuple[str, ...] = ()
) -> pydicom.Dataset:
    import io

    ds = make_dx_chest()
    for keyword, vr, raw in values:
        _raw_value(ds, keyword, vr, raw)
    for keyword in delete:
        del ds[keyword]
    ds.add_new(0x00091010, "UN", b"\x01\x02\x03\x04")  # a private tag of unknown VR
    ds.add_new(0x00091011, "SH", "abcd")  # written, then its VR garbled to ZZ below
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert data.count(_UNKNOWN_VR_ELEMENT) == 1
    data = data.replace(_UNKNOWN_VR_ELEMENT, _UNKNOWN_VR_ELEMENT.replace(b"SH", b"ZZ"))
    return pydicom.dcmread(io.BytesIO(data))


@pytest.fixture
def pydicom_quiet() -> Iterator[None]:
    """As in production (cxr_node.logs): pydicom's warnings about invalid values are dropped."""
    import warnings

    from cxr_node.logs import quiet_pydicom_warnings

    with warnings.catch_warnings():
        quiet_pydicom_warnings()
        yield


@pytest.mark.usefixtures("pydicom_quiet")
@pytest.mark.parametrize("case", list(HOSTILE_VALUES))
def test_invalid_source_values_are_left_out_of_sr_and_sc(case: str, tmp_path: Path) -> None:
    import numpy as np

    from workers.encode.sc import build_heatmap_sc

    source = _hostile_source(HOSTILE_VALUES[case])
    analysis = make_analysis(str(source.SOPInstanceUID), demo=True)
    sr = _build(source, analysis)
    display = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    sc = build_heatmap_sc(
        source,
        display,
        None,
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=902,
    )
    for name, result in (("sr", sr), ("sc", sc)):
        assert result.SpecificCharacterSet == "ISO_IR 192"
        path = tmp_path / f"{name}.dcm"
        result.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], (case, name)


@pytest.mark.parametrize(
    ("keyword", "raw", "code"),
    [
        ("StudyInstanceUID", b"aux.1\x00", "INVALID_STUDY_UID"),
        ("StudyInstanceUID", b"1.02.3\x00", "INVALID_STUDY_UID"),
        ("SeriesInstanceUID", b"1.2.03\x00", "INVALID_SOURCE_UID"),
        ("StudyInstanceUID", b"1." * 40 + b"1\x00", "INVALID_STUDY_UID"),
        ("SeriesInstanceUID", b"1.2.3\\1.2.4\x00", "INVALID_SOURCE_UID"),
        ("SOPClassUID", None, "INVALID_SOURCE_UID"),
        ("SeriesInstanceUID", None, "INVALID_SOURCE_UID"),
    ],
)
@pytest.mark.usefixtures("pydicom_quiet")
def test_invalid_identity_uid_refuses_the_result(
    keyword: str, raw: bytes | None, code: str
) -> None:
    """``raw`` None: the attribute is absent."""
    from cxr_node.errors import RejectedInput
    from workers.results import encode_results

    if raw is None:
        source = _hostile_source([], delete=(keyword,))
    else:
        source = _hostile_source([(keyword, "UI", raw)])
    analysis = make_analysis(str(source.SOPInstanceUID), demo=True)
    with pytest.raises(RejectedInput) as caught:
        _build(source, analysis)
    assert caught.value.reason_code == code
    analysed = SimpleNamespace(analysis=analysis)
    with pytest.raises(RejectedInput) as caught:
        encode_results(source, analysed)  # type: ignore[arg-type]
    assert caught.value.reason_code == code
