"""Studies put into a ledger the way the node does (intake, claim, results), for the worklist,
API and page tests: made-up patients, a chosen priority and score."""

from __future__ import annotations

from cxr_node.jobs import CodedConcept, Finding, ImageAnalysis, ModelInfo, Priority
from cxr_node.ledger import Ledger, ResultRow, StudyAttributes

CHEST = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def findings(score: float) -> list[Finding]:
    """Two findings: Pneumothorax at ``score`` (threshold 0.5), Effusion at 0.1."""
    return [
        Finding(
            label="Pneumothorax",
            code=CodedConcept(value="36118008", scheme="SCT", meaning="Pneumothorax"),
            probability=score,
            threshold=0.5,
            positive=score >= 0.5,
        ),
        Finding(
            label="Effusion",
            code=CodedConcept(value="60046008", scheme="SCT", meaning="Pleural effusion"),
            probability=0.1,
            threshold=0.4,
            positive=False,
        ),
    ]


def seed_study(
    ledger: Ledger,
    key: str,
    *,
    priority: Priority | None,
    score: float = 0.2,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-1",
    accession: str = "ACC-1",
    calling_ae: str = "MODALITY",
    destinations: list[str] | None = None,
    demo: bool = True,
    shadow: bool = False,
) -> str:
    """A one-image study (received in shadow mode with ``shadow``); analysed with ``priority``
    and ``score`` unless ``priority`` is None (then left received). Returns the image's SOP
    Instance UID."""
    sop = f"{key}.1"
    ledger.record_instance(
        study_key=key,
        study_uid=key,
        sop_instance_uid=sop,
        sop_class_uid=CHEST,
        path=f"{key}/{sop}.dcm",
        size=1000,
        eligible=True,
        reason_code=None,
        reason=None,
        calling_ae=calling_ae,
        destinations=destinations or [],
        attributes=StudyAttributes(
            patient_name=patient_name,
            patient_id=patient_id,
            accession_number=accession,
            study_description="CHEST PA",
            modality="DX",
        ),
        shadow=shadow,
    )
    if priority is None:
        return sop
    ledger.mark_queued(key)
    token = ledger.claim(key, lease_seconds=60)
    analysis = ImageAnalysis(
        sop_instance_uid=sop,
        findings=findings(score),
        abnormality_score=score,
        priority=priority,
        model=ModelInfo(name="cxr-demo", version="0.1", demo=demo, members=[], device_uid="1.2"),
    )
    results = [
        ResultRow(
            sop_instance_uid=f"{key}.9{n}",
            source_sop_instance_uid=sop,
            kind=kind,
            path=f"{key}/results/{key}.9{n}.dcm",
        )
        for n, kind in enumerate(("sr", "sc"))
    ]
    assert ledger.record_results(key, results, destinations or [], token, analyses=[analysis])
    return sop
