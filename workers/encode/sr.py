"""AI results for one chest radiograph as a Comprehensive 3D SR (PS3.3 A.35.13).

The content tree is a PS3.16 TID 1500 Measurement Report built with highdicom:

- one TID 1501 measurement group for the image: tracking identifier, TID 4019
  algorithm identification, the source image, per finding a coded Present/Absent
  evaluation and a probability, the abnormality score and the triage priority, and
  (TID 1501 row 12, TEXT qualitative evaluation) the AI / not-for-diagnosis statement;
- one TID 1410 planar ROI group per positive finding that has a region (a closed
  POLYLINE box in source pixel coordinates);
- the same statement once more at report level, TID 1500 rows 12 and 14
  ("Qualitative Evaluations" container holding a TEXT item).

The document lives in the source study (Patient and Study modules copied by
highdicom from the evidence), in a new series.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
import pydicom.config
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, validate_value

from cxr_node.jobs import CodedConcept as JobCode
from cxr_node.jobs import Finding, ImageAnalysis, ModelInfo, Priority, Region

MANUFACTURER = "cxr-node"
"""Manufacturer of the device observer and of the General Equipment module."""

PRIVATE_SCHEME = "99CXRNODE"
"""Private coding scheme (PS3.16 Section 8.2: "99" prefix) for product-specific concepts."""

PROCEDURE_CHEST_XR = CodedConcept("36554-4", "LN", "XR Chest Single view")
"""LOINC 36554-4 "XR Chest Single view" (LOINC/RSNA Radiology Playbook): one image is reported."""

PROBABILITY_UNIT = CodedConcept("{probability}", "UCUM", "probability")
"""UCUM annotation unit: dimensionless (1) with the annotation "probability"."""

ABNORMALITY_SCORE = CodedConcept("ABNSCORE", PRIVATE_SCHEME, "Abnormality score")
PRIORITY = CodedConcept("260870009", "SCT", "Priority")
PRIORITY_VALUES: dict[Priority, CodedConcept] = {
    Priority.ROUTINE: CodedConcept("ROUTINE", PRIVATE_SCHEME, "Routine"),
    Priority.ABNORMAL: CodedConcept("ABNORMAL", PRIVATE_SCHEME, "Abnormal"),
    Priority.CRITICAL: CodedConcept("CRITICAL", PRIVATE_SCHEME, "Critical"),
}
COMMENT = CodedConcept("121106", "DCM", "Comment")
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
"""TID 1500 row 12 container concept name."""

AI_CONTRIBUTION = "AI model that produced these results (not a diagnosis)"
"""Contribution Description (LO) of the algorithm's Contributing Equipment item."""

SERIES_DESCRIPTION_MAX = 64
"""SeriesDescription is LO (PS3.5 Table 6.2-1)."""


def series_description(*, demo: bool, kind: str = "results") -> str:
    """SeriesDescription marking AI output as not for diagnostic use (GUIDE practice 7)."""
    tail = "DEMO model, not for diagnostic use" if demo else "not for diagnostic use"
    text = f"AI-generated CXR {kind} - {tail}"
    if len(text) > SERIES_DESCRIPTION_MAX:
        raise ValueError(f"series description longer than {SERIES_DESCRIPTION_MAX} characters")
    return text


def disclaimer(model: ModelInfo) -> str:
    """The statement carried as text in the SR: AI-generated, not a diagnosis, DEMO if so."""
    text = (
        f"AI-generated result ({model.name} {model.version}); not a diagnosis and not for "
        "diagnostic use. Findings must be reviewed by a qualified clinician."
    )
    if model.demo:
        text += " DEMO MODEL - NOT TRAINED: results are for demonstration and testing only."
    return text


def ai_equipment(model: ModelInfo, description: str) -> hd.ContributingEquipment:
    """The algorithm as Contributing Equipment (IHE AIR Rev 1.3 Vol 3 6.5.3.1).

    Purpose of Reference (109102, DCM, "Processing Equipment"); Manufacturer, Model Name,
    Software Versions and Device UID equal the TID 1004 device observer and the TID 4019
    algorithm name and version, as AIR Table 6.5.3.1-1 requires.
    """
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_description=description,
    )
    item.DeviceUID = model.device_uid  # Type 3 (PS3.3 C.12.1); no highdicom argument for it
    return item


def _code(concept: JobCode) -> CodedConcept:
    """Job-contract code triple to a highdicom code (PS3.3 Section 8.8)."""
    return CodedConcept(concept.value, concept.scheme, concept.meaning)


def _tracking(sr_uid: str, key: str, identifier: str) -> hd.sr.TrackingIdentifier:
    """TID 4108 tracking identifier; the UID is derived, so re-encoding is reproducible."""
    return hd.sr.TrackingIdentifier(
        uid=generate_uid(entropy_srcs=[sr_uid, key]), identifier=identifier
    )


def _algorithm(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification; parameters list the ensemble members."""
    members = [
        f"member {m.name} {m.version} weight {m.weight:g} sha256 {m.sha256[:16]}"
        for m in model.members
    ]
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"demo {str(model.demo).lower()}", *members],
        manufacturer=MANUFACTURER,
    )


def observation_context(model: ModelInfo) -> hd.sr.ObservationContext:
    """TID 1001 observation context with a TID 1004 device observer (the model)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=model.device_uid,
        name=model.name,
        manufacturer_name=MANUFACTURER,
        model_name=model.name,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _presence(finding: Finding) -> hd.sr.QualitativeEvaluation:
    """Finding -> Present/Absent (PS3.16 CID 241 Present-Absent Only)."""
    value = codes.cid241.Present if finding.positive else codes.cid241.Absent
    return hd.sr.QualitativeEvaluation(name=_code(finding.code), value=value)


def _probability(finding: Finding) -> hd.sr.Measurement:
    """TID 300 measurement: the model's probability for the finding."""
    return hd.sr.Measurement(
        name=_code(finding.code), value=finding.probability, unit=PROBABILITY_UNIT
    )


def text_evaluation(text: str) -> hd.sr.TextContentItem:
    """TEXT qualitative evaluation (TID 1501 row 12, TID 1500 row 14)."""
    return hd.sr.TextContentItem(
        name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _image_group(
    source: pydicom.Dataset, analysis: ImageAnalysis, sr_uid: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for the whole image, with the statement as row 12 TEXT."""
    measurements = [_probability(f) for f in analysis.findings]
    measurements.append(
        hd.sr.Measurement(
            name=ABNORMALITY_SCORE, value=analysis.abnormality_score, unit=PROBABILITY_UNIT
        )
    )
    evaluations = [_presence(f) for f in analysis.findings]
    evaluations.append(
        hd.sr.QualitativeEvaluation(name=PRIORITY, value=PRIORITY_VALUES[analysis.priority])
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(sr_uid, "image", "AI chest radiograph analysis"),
        algorithm_id=_algorithm(analysis.model),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    group[0].ContentSequence.append(text_evaluation(disclaimer(analysis.model)))
    return group


def _box(region: Region, source: pydicom.Dataset) -> np.ndarray:
    """Closed 5-point POLYLINE (column, row), clamped to the image (PS3.3 C.18.6.1.2)."""
    columns, rows = float(source.Columns), float(source.Rows)
    x0, x1 = (min(max(v, 0.0), columns) for v in (region.x_min, region.x_max))
    y0, y1 = (min(max(v, 0.0), rows) for v in (region.y_min, region.y_max))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)


def _region_group(
    source: pydicom.Dataset, analysis: ImageAnalysis, finding: Finding, region: Region, sr_uid: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 planar ROI group: the finding's box and its Present evaluation."""
    image_region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_box(region, source),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(sr_uid, f"region:{finding.label}", f"{finding.label} region"),
        referenced_region=image_region,
        finding_type=_code(finding.code),
        algorithm_id=_algorithm(analysis.model),
        qualitative_evaluations=[_presence(finding)],
    )


def _region_groups(
    source: pydicom.Dataset, analysis: ImageAnalysis, sr_uid: str
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per positive finding that has a region, most probable first."""
    return [
        _region_group(source, analysis, f, f.region, sr_uid)
        for f in analysis.positive_findings
        if f.region is not None
    ]


def _has_pair(ds: pydicom.Dataset, keyword: str) -> bool:
    value = ds.get(keyword)
    return value is not None and not isinstance(value, str) and len(value) == 2


def _library_image(source: pydicom.Dataset) -> pydicom.Dataset:
    """The image as TID 1601 library entry.

    highdicom's TID 1603 projection descriptors read PatientOrientation and
    ImagerPixelSpacing unconditionally; real CR headers often lack them. Then the
    entry carries only the TID 1602 basics (modality from the SOP class, rows, columns).
    """
    if _has_pair(source, "PatientOrientation") and _has_pair(source, "ImagerPixelSpacing"):
        return source
    entry = pydicom.Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID"):
        if keyword in source:
            setattr(entry, keyword, source[keyword].value)
    entry.Modality = ""  # no modality-specific (TID 1603/1604) descriptors
    return entry


def _report(
    source: pydicom.Dataset, analysis: ImageAnalysis, sr_uid: str
) -> hd.sr.MeasurementReport:
    """TID 1500 Measurement Report, plus the report-level statement (rows 12 and 14)."""
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = [_image_group(source, analysis, sr_uid), *_region_groups(source, analysis, sr_uid)]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(analysis.model),
        procedure_reported=PROCEDURE_CHEST_XR,
        imaging_measurements=groups,
        referenced_images=[_library_image(source)],
    )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([text_evaluation(disclaimer(analysis.model))])
    report[0].ContentSequence.append(container)
    return report


def private_coding_schemes() -> Sequence[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification for the private scheme (PS3.3 C.12.1.1.4)."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="cxr-node private codes",
            responsible_organization=MANUFACTURER,
        )
    ]


_TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
_VERBATIM = ("PatientName", "ReferringPhysicianName", "PatientSex")
_SEXES = ("M", "F", "O", "")


def _explicit_name(value: object) -> str:
    """A one-component name with its trailing caret (PS3.5 6.2.1.2: same name)."""
    text = str(value)
    return text if text == "" or "^" in text else f"{text}^"


def header_view(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source without pixels, in the shape highdicom's constructors accept.

    highdicom reads Patient/Study attributes unconditionally, warns on one-component
    person names and rejects unknown sexes. Absent Type 2 attributes become empty
    (what the standard asks of the output); names and sex are only made acceptable
    here and written back verbatim by ``restore_verbatim``.
    """
    view = pydicom.Dataset()
    for element in source:
        if element.tag != 0x7FE00010 and element.tag.group != 0x0002:
            view.add(copy.deepcopy(element))
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in view:
            setattr(view, keyword, None)
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if view[keyword].value is not None:
            setattr(view, keyword, _explicit_name(view[keyword].value))
    if view.PatientSex not in _SEXES and view.PatientSex is not None:
        view.PatientSex = ""
    _blank_values_invalid_for_their_vr(view)
    return view


_TEMPORAL_VRS = {"DA": DA, "TM": TM, "DT": DT}
_TEXT_VRS = {"AE", "AS", "CS", "LO", "SH"}  # not UI: identity must be kept as sent


def _blank_values_invalid_for_their_vr(view: pydicom.Dataset) -> None:
    """Empty top-level values the result would copy but their VR forbids (PS3.5 6.2): dates and
    times that do not parse (e.g. "1970-01-31"), which highdicom refuses, and strings too long
    for their VR (a 56-character Accession Number, SH), which would make the result invalid.
    An empty Type 2 value says "unknown"; a truncated one would say something false."""
    for element in view:
        if not element.value:
            continue
        parse = _TEMPORAL_VRS.get(element.VR)
        try:
            if parse is not None and element.VM == 1:
                parse(str(element.value), validation_mode=pydicom.config.RAISE)
            elif element.VR in _TEXT_VRS:
                values = element.value if element.VM > 1 else [element.value]
                for value in values:
                    validate_value(element.VR, value, pydicom.config.RAISE)
        except (ValueError, TypeError):
            element.value = ""


def restore_verbatim(result: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Write the source's own person names and sex into the result (same Patient module)."""
    for keyword in _VERBATIM:
        if keyword in source:
            setattr(result, keyword, source[keyword].value)


def build_measurement_report(
    source: pydicom.Dataset,
    analysis: ImageAnalysis,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """Comprehensive 3D SR (PS3.3 A.35.13) with a TID 1500 report on one image.

    COMPLETE (the analysis of the image is all there), PRELIMINARY (not the
    definitive report), UNVERIFIED (no clinician has verified it).
    """
    if analysis.sop_instance_uid != source.SOPInstanceUID:
        raise ValueError("analysis does not belong to the source image")
    sr = comprehensive_sr(
        [header_view(source)],
        _report(source, analysis, sop_instance_uid),
        device=analysis.model,
        contribution=AI_CONTRIBUTION,
        series_description=series_description(demo=analysis.model.demo),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    restore_verbatim(sr, source)
    return sr


def comprehensive_sr(
    evidence: list[pydicom.Dataset],
    report: hd.sr.MeasurementReport,
    *,
    device: ModelInfo,
    contribution: str,
    series_description: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
) -> hd.sr.Comprehensive3DSR:
    """Our SR documents: Comprehensive 3D SR (PS3.3 A.35.13) in the evidence's study, COMPLETE,
    PRELIMINARY (not the definitive report) and UNVERIFIED (no clinician verified it), with
    ``device`` as equipment and IHE AIR Contributing Equipment."""
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        performed_procedure_codes=[PROCEDURE_CHEST_XR],
        series_description=series_description,
        manufacturer_model_name=device.name,
        software_versions=device.version,
        coding_schemes=private_coding_schemes(),
        contributing_equipment=[ai_equipment(device, contribution)],
    )
