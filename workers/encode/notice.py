"""The "not analysed" notice: a short TID 1500 SR saying the AI did not look at a study, and why.

A reader who finds no AI result cannot tell "nothing found" from "never analysed"; this SR
tells. It is a Comprehensive 3D SR (PS3.3 A.35.13) in the source study, in the AI results
series, whose single TID 1501 group references the images that were not analysed and holds:
the coded status "AI analysis: not done" (SCT 385660001), the reason (code and text), and the
AI / not-a-diagnosis statement. It carries no findings and no probabilities.
"""

from __future__ import annotations

import highdicom as hd
import pydicom
from highdicom.sr import CodedConcept
from pydicom.uid import generate_uid

from cxr_node import __version__
from cxr_node.jobs import ModelInfo
from workers.encode.header import header_view, restore_verbatim
from workers.encode.sr import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    PROCEDURE_CHEST_XR,
    comprehensive_sr,
    observation_context,
    series_description,
    text_evaluation,
)

AI_ANALYSIS_STATUS = CodedConcept("AISTATUS", PRIVATE_SCHEME, "AI analysis status")
NOT_DONE = CodedConcept("385660001", "SCT", "Not done")
"""SNOMED CT qualifier value 385660001 |Not done|."""
REASON = CodedConcept("REASON", PRIVATE_SCHEME, "Reason not analysed")


def node_device() -> ModelInfo:
    """The node itself as the device observer: no model produced this document."""
    return ModelInfo(
        name="cxr-node",
        version=__version__,
        demo=False,
        members=[],
        device_uid=str(generate_uid(entropy_srcs=["cxr-node", __version__])),
    )


def notice_text(reason_code: str, reason: str) -> str:
    """What the notice says, in words."""
    return (
        f"The AI did not analyse this study ({reason_code}: {reason}). No AI result exists for "
        "it: absence of AI findings means nothing here. AI-generated notice; not a diagnosis."
    )


def build_not_analysed_report(
    sources: list[pydicom.Dataset],
    *,
    reason_code: str,
    reason: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """Comprehensive 3D SR with a TID 1500 report saying the study was not analysed, and why.

    ``sources`` are the study's instances (headers suffice), all referenced as evidence.
    """
    if not sources:
        raise ValueError("a notice needs at least one instance of the study")
    device = node_device()
    evidence = [header_view(source) for source in sources]
    status = hd.sr.QualitativeEvaluation(name=AI_ANALYSIS_STATUS, value=NOT_DONE)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[sop_instance_uid, "notice"]),
            identifier="AI chest radiograph analysis not done",
        ),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=device.name, version=device.version, manufacturer=MANUFACTURER
        ),
        qualitative_evaluations=[status],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(view) for view in evidence
        ],
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=REASON,
            value=f"{reason_code}: {reason}"[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    group[0].ContentSequence.append(text_evaluation(notice_text(reason_code, reason)))
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(device),
        procedure_reported=PROCEDURE_CHEST_XR,
        imaging_measurements=[group],
    )
    sr = comprehensive_sr(
        evidence,
        report,
        device=device,
        contribution="AI node that did not analyse the study",
        series_description=series_description(demo=False, kind="notice"),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    restore_verbatim(sr, sources[0])
    return sr
