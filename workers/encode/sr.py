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

Speed: highdicom validates every content item it makes, and its SR constructor deep-copies
and re-parses the whole tree; ~560 items took 0.3 s per document. So highdicom builds the
tree once per model, label set and kind of source image, with placeholders (``_report``
on a placeholder image and analysis), and each document is a copy of that template with its
own values set where highdicom put the placeholders (``_fast_report``): UIDs, probabilities,
Present/Absent, priority, boxes, rows and columns. The unit tests check that the result is
byte for byte the tree ``_report`` builds directly. Templates know where highdicom puts each
value, so they are used only with the highdicom series they were checked against
(:func:`cxr_node.compat.sr_templates`); otherwise highdicom builds every tree.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import highdicom as hd
import numpy as np
import pydicom
import pydicom.config
import pydicom.datadict
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from cxr_node import compat
from cxr_node.jobs import CodedConcept as JobCode
from cxr_node.jobs import Finding, ImageAnalysis, ModelInfo, Priority, Region

from .copies import clone, clone_element
from .header import header_view, restore_verbatim

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
    algorithm name and version, as AIR Table 6.5.3.1-1 requires. A copy of the item
    highdicom built for this model and description.
    """
    return clone(_ai_equipment(model.model_dump_json(), description))


@functools.lru_cache(maxsize=32)
def _ai_equipment(model_json: str, description: str) -> hd.ContributingEquipment:
    model = ModelInfo.model_validate_json(model_json)
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
    """TID 1500 Measurement Report built by highdicom piece by piece (rows 12 and 14 added).

    The reference for what ``_fast_report`` produces from templates; it is also how the
    templates are made.
    """
    return _measurement_report(
        analysis.model,
        [_image_group(source, analysis, sr_uid), *_region_groups(source, analysis, sr_uid)],
        _library_image(source),
    )


def _measurement_report(
    model: ModelInfo,
    groups: Sequence[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ],
    library_image: pydicom.Dataset,
) -> hd.sr.MeasurementReport:
    """TID 1500 Measurement Report, plus the report-level statement (rows 12 and 14)."""
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(model),
        procedure_reported=PROCEDURE_CHEST_XR,
        imaging_measurements=groups,
        referenced_images=[library_image],
    )
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([text_evaluation(disclaimer(model))])
    report[0].ContentSequence.append(container)
    return report


# Templates: highdicom builds a report once per model, label set and kind of source image,
# with placeholders where documents differ; a document is a copy with its values set.
# tests/unit/test_encode_sr.py checks that the result is the tree highdicom builds directly.

_PLACEHOLDER_SOP_INSTANCE = "2.25.1"
_PLACEHOLDER_FRAME_OF_REFERENCE = "2.25.2"
_PLACEHOLDER_SR = "2.25.3"
_PIXEL_DESCRIPTION = ("Rows", "Columns", "SamplesPerPixel", "PixelRepresentation")
"""What highdicom checks to accept a dataset as a source image (one of them suffices)."""
_PROJECTION_MODALITIES = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
"""Modalities with TID 1603 library descriptors (as highdicom decides)."""
_CROSS_SECTIONAL_MODALITIES = ("CT", "MR", "PT")
_PRESENT = CodedConcept.from_code(codes.cid241.Present)
_ABSENT = CodedConcept.from_code(codes.cid241.Absent)
_ROWS = codes.DCM.PixelDataRows
_COLUMNS = codes.DCM.PixelDataColumns
_CACHE_SIZE = 32


def _container(items: pydicom.Sequence) -> hd.sr.ContainerContentItem:
    """The single CONTAINER a highdicom template (or TID 1500 report) holds."""
    item = items[0]
    if not isinstance(item, hd.sr.ContainerContentItem):
        raise TypeError(f"expected a CONTAINER content item, got {type(item).__name__}")
    return item


def _tracking_uid(sr_uid: str, key: str) -> str:
    return str(generate_uid(entropy_srcs=[sr_uid, key]))


def _items(item: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    """A content item and all its descendants, depth first."""
    yield item
    for child in item.get("ContentSequence", ()):
        yield from _items(child)


def _positions(items: Sequence[pydicom.Dataset], value_type: str) -> list[int]:
    return [index for index, item in enumerate(items) if item.ValueType == value_type]


def _set_number(item: pydicom.Dataset, value: float) -> None:
    """A NUM item's value, set as highdicom's NumContentItem sets it (DS and, for a float, FD)."""
    measured = item.MeasuredValueSequence[0]
    measured.NumericValue = DS(value, auto_format=True)
    if isinstance(value, float):
        measured.FloatingPointValue = value
    elif "FloatingPointValue" in measured:
        del measured.FloatingPointValue


def _set_code(item: pydicom.Dataset, value: CodedConcept) -> None:
    """A CODE item's value (Concept Code Sequence), as highdicom's CodeContentItem sets it."""
    item.ConceptCodeSequence = [value]


class _SourceKind(NamedTuple):
    """What highdicom's references to a source image read of it, UIDs aside."""

    sop_class: str
    modality: str | None
    pixel_description: tuple[bool, ...]
    """Which of _PIXEL_DESCRIPTION the image has."""


def _source_kind(source: pydicom.Dataset) -> _SourceKind:
    return _SourceKind(
        str(source.SOPClassUID),
        source.get("Modality"),
        tuple(keyword in source for keyword in _PIXEL_DESCRIPTION),
    )


def _placeholder_source(kind: _SourceKind) -> pydicom.Dataset:
    source = pydicom.Dataset()
    source.SOPClassUID = kind.sop_class
    source.SOPInstanceUID = _PLACEHOLDER_SOP_INSTANCE
    if kind.modality is not None:
        source.Modality = kind.modality
    for keyword, present in zip(_PIXEL_DESCRIPTION, kind.pixel_description, strict=True):
        if present:
            setattr(source, keyword, 0 if keyword == "PixelRepresentation" else 1)
    return source


@dataclass(frozen=True)
class _ReportTemplate:
    """A TID 1500 tree built by highdicom with placeholder values, and where they sit."""

    root: hd.sr.ContainerContentItem
    """Report root, without the image library; its Imaging Measurements container is empty."""
    library_index: int
    """Where the Image Library container goes in the root."""
    measurements_index: int
    """Where the Imaging Measurements container is in the root (without the library)."""
    image_group: hd.sr.ContainerContentItem
    numbers: list[int]
    """Positions of the NUM items in the image group: one per finding, then the score."""
    codes: list[int]
    """Positions of the CODE items in the image group: one per finding, then the priority."""
    regions: list[tuple[hd.sr.ContainerContentItem, int]]
    """Per finding: its TID 1410 group and the position of the SCOORD in it."""


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _report_template(
    model_json: str, labels: tuple[tuple[str, str, str, str], ...], kind: _SourceKind
) -> _ReportTemplate:
    """The template for one model, its findings (label and code, in order) and source kind."""
    model = ModelInfo.model_validate_json(model_json)
    findings = [
        Finding(
            label=label,
            code=JobCode(value=value, scheme=scheme, meaning=meaning),
            probability=0.5,
            threshold=0.5,
            positive=True,  # every finding can have a TID 1410 group
        )
        for label, value, scheme, meaning in labels
    ]
    source = _placeholder_source(kind)
    analysis = ImageAnalysis(
        sop_instance_uid=_PLACEHOLDER_SOP_INSTANCE,
        findings=findings,
        abnormality_score=0.5,
        priority=Priority.ROUTINE,
        model=model,
    )
    image_group = _image_group(source, analysis, _PLACEHOLDER_SR)
    report = _measurement_report(model, [image_group], _library_image(source))
    root = _container(report)
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in root.ContentSequence]
    library_index = names.index(codes.DCM.ImageLibrary.value)
    del root.ContentSequence[library_index]
    del names[library_index]
    measurements_index = names.index(codes.DCM.ImagingMeasurements.value)
    root.ContentSequence[measurements_index].ContentSequence = hd.sr.ContentSequence()
    group = _container(image_group)
    numbers = _positions(group.ContentSequence, "NUM")
    code_items = _positions(group.ContentSequence, "CODE")
    if len(numbers) != len(findings) + 1 or len(code_items) != len(findings) + 1:
        raise RuntimeError("unexpected TID 1501 layout from highdicom")
    regions = []
    for finding in findings:
        box = Region(x_min=0.0, y_min=0.0, x_max=1.0, y_max=1.0)
        region_group = _container(_region_group(source, analysis, finding, box, _PLACEHOLDER_SR))
        (scoord,) = _positions(region_group.ContentSequence, "SCOORD")
        regions.append((region_group, scoord))
    return _ReportTemplate(
        root, library_index, measurements_index, group, numbers, code_items, regions
    )


def _library_key(entry: pydicom.Dataset) -> tuple[object, ...] | None:
    """What highdicom's TID 1601 entry reads of an image, UIDs, rows and columns aside.

    None: not kept (cross-sectional descriptors, which we never expect for a radiograph).
    """
    modality = entry.get("Modality")
    if modality in _CROSS_SECTIONAL_MODALITIES:
        return None
    projection = None
    if modality in _PROJECTION_MODALITIES:
        projection = (
            tuple(str(value) for value in entry.PatientOrientation),
            tuple(
                (type(value).__name__, float(value), getattr(value, "original_string", None))
                for value in entry.ImagerPixelSpacing
            ),
        )
    present = tuple(keyword in entry for keyword in ("Rows", "Columns", "FrameOfReferenceUID"))
    return (str(entry.SOPClassUID), modality, present, projection)


_LIBRARIES: dict[tuple[object, ...], hd.sr.ContainerContentItem] = {}


def _library_template(image: pydicom.Dataset) -> hd.sr.ContainerContentItem:
    """The Image Library container for one kind of image, with placeholder UIDs and size."""
    placeholder = pydicom.Dataset()
    placeholder.SOPClassUID = image.SOPClassUID
    placeholder.SOPInstanceUID = _PLACEHOLDER_SOP_INSTANCE
    for keyword in ("Rows", "Columns"):
        if keyword in image:
            setattr(placeholder, keyword, 1)
    if "FrameOfReferenceUID" in image:
        placeholder.FrameOfReferenceUID = _PLACEHOLDER_FRAME_OF_REFERENCE
    for keyword in ("Modality", "PatientOrientation", "ImagerPixelSpacing"):
        if keyword in image:
            placeholder[keyword] = clone_element(image[keyword])
    return _container(hd.sr.ImageLibrary([placeholder]))


def _image_library(source: pydicom.Dataset) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library container with the source image (TID 1601, 1602, 1603)."""
    entry = _library_image(source)
    key = _library_key(entry)
    if key is None:
        return _container(hd.sr.ImageLibrary([entry]))
    uids = {_PLACEHOLDER_SOP_INSTANCE: str(entry.SOPInstanceUID)}
    if "FrameOfReferenceUID" in entry:
        uids[_PLACEHOLDER_FRAME_OF_REFERENCE] = str(entry.FrameOfReferenceUID)
    template = _LIBRARIES.get(key)
    if template is None:
        template = _library_template(entry)
        if len(_LIBRARIES) >= _CACHE_SIZE:
            _LIBRARIES.clear()
        _LIBRARIES[key] = template
    library = clone(template, uids)
    for item in _items(library):
        name = item.ConceptNameCodeSequence[0]
        for code, keyword in ((_ROWS, "Rows"), (_COLUMNS, "Columns")):
            if item.ValueType == "NUM" and name.CodeValue == code.value:
                _set_number(item, entry[keyword].value)
    return library


def _fast_report(
    source: pydicom.Dataset, analysis: ImageAnalysis, sr_uid: str
) -> hd.sr.ContainerContentItem:
    """The root of the tree ``_report`` builds, made from copies of templates."""
    labels = tuple(
        (f.label, f.code.value, f.code.scheme, f.code.meaning) for f in analysis.findings
    )
    template = _report_template(analysis.model.model_dump_json(), labels, _source_kind(source))
    sop_instance = str(source.SOPInstanceUID)
    group = clone(
        template.image_group,
        {
            _PLACEHOLDER_SOP_INSTANCE: sop_instance,
            _tracking_uid(_PLACEHOLDER_SR, "image"): _tracking_uid(sr_uid, "image"),
        },
    )
    items = group.ContentSequence
    values = [f.probability for f in analysis.findings] + [analysis.abnormality_score]
    for index, value in zip(template.numbers, values, strict=True):
        _set_number(items[index], value)
    concepts = [_PRESENT if f.positive else _ABSENT for f in analysis.findings]
    concepts.append(PRIORITY_VALUES[analysis.priority])
    for index, concept in zip(template.codes, concepts, strict=True):
        _set_code(items[index], concept)
    groups = [group]
    positions = {id(finding): index for index, finding in enumerate(analysis.findings)}
    for finding in analysis.positive_findings:
        if finding.region is None:
            continue
        region_template, scoord = template.regions[positions[id(finding)]]
        key = f"region:{finding.label}"
        region = clone(
            region_template,
            {
                _PLACEHOLDER_SOP_INSTANCE: sop_instance,
                _tracking_uid(_PLACEHOLDER_SR, key): _tracking_uid(sr_uid, key),
            },
        )
        points = _box(finding.region, source)
        region.ContentSequence[scoord].GraphicData = points.flatten().tolist()
        groups.append(region)
    root = clone(template.root)
    root.ContentSequence[template.measurements_index].ContentSequence = groups
    root.ContentSequence.insert(template.library_index, _image_library(source))
    return root


def private_coding_schemes() -> Sequence[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification for the private scheme (PS3.3 C.12.1.1.4)."""
    return [
        CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME,
            name="cxr-node private codes",
            responsible_organization=MANUFACTURER,
        )
    ]


def build_measurement_report(
    source: pydicom.Dataset,
    analysis: ImageAnalysis,
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
    header: pydicom.Dataset | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Comprehensive 3D SR (PS3.3 A.35.13) with a TID 1500 report on one image.

    COMPLETE (the analysis of the image is all there), PRELIMINARY (not the
    definitive report), UNVERIFIED (no clinician has verified it). ``header``:
    ``header_view(source)`` when the caller has one to give away (the SR keeps its elements).
    """
    header = header if header is not None else header_view(source)
    if analysis.sop_instance_uid != header.SOPInstanceUID:
        raise ValueError("analysis does not belong to the source image")
    valid = clone(header)  # only valid values reach the content (the header is given away)
    content: hd.sr.MeasurementReport | hd.sr.ContainerContentItem
    if compat.sr_templates():
        content = _fast_report(valid, analysis, sop_instance_uid)
    else:
        content = _report(valid, analysis, sop_instance_uid)
    sr = comprehensive_sr(
        [header],
        content,
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
    content: hd.sr.MeasurementReport | hd.sr.ContainerContentItem,
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
    ``device`` as equipment and IHE AIR Contributing Equipment.

    ``content`` is the TID 1500 report (or its root container), built by highdicom. The tree
    is ours and every image it references is in ``evidence``, so highdicom's copy and re-parse
    of it is skipped where that is safe (:func:`cxr_node.compat.build_sr`).
    """
    root = _container(content) if isinstance(content, hd.sr.ContentSequence) else content
    return compat.build_sr(
        hd.sr.Comprehensive3DSR,
        root,
        evidence=evidence,
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
