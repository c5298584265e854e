"""From analysis data to DICOM result objects on disk (SR + SC), with stable UIDs.

Result UIDs derive from the source instance and the model set, so analysing the same image again
with the same models (after a crash, say) re-creates the same SOP Instance UIDs and a PACS
stores them once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.uid import generate_uid

from workers.encode.copies import clone
from workers.encode.header import header_view
from workers.encode.notice import build_not_analysed_report, node_device
from workers.encode.part10 import to_part10
from workers.encode.sc import build_heatmap_sc
from workers.encode.sr import build_measurement_report

if TYPE_CHECKING:
    from workers.analysis import AnalysedImage

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
NOTICE_SERIES_NUMBER = 9903


def _uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=list(parts)))


def encode_results(source: Dataset, analysed: AnalysedImage) -> list[tuple[str, Dataset]]:
    """The SR and the SC for one analysed image, as (kind, dataset) pairs."""
    header = header_view(source)  # once; each result keeps (and changes) its own copy
    study_uid = str(header.StudyInstanceUID)  # present and valid, or header_view refused
    source_uid = str(header.SOPInstanceUID)
    device_uid = analysed.analysis.model.device_uid
    report = build_measurement_report(
        source,
        analysed.analysis,
        series_instance_uid=_uid(study_uid, device_uid, "sr-series"),
        sop_instance_uid=_uid(source_uid, device_uid, "sr"),
        series_number=SR_SERIES_NUMBER,
        header=clone(header),
    )
    heatmap = build_heatmap_sc(
        source,
        analysed.picture,
        analysed.heatmap,
        analysed.analysis,
        series_instance_uid=_uid(study_uid, device_uid, "sc-series"),
        sop_instance_uid=_uid(source_uid, device_uid, "sc"),
        series_number=SC_SERIES_NUMBER,
        header=header,
    )
    return [("sr", report), ("sc", heatmap)]


def encode_notice(sources: list[Dataset], reason_code: str, reason: str) -> Dataset:
    """The "not analysed" SR of a study; the same study, instances and reason give the same UIDs."""
    study_uid = str(sources[0].StudyInstanceUID)
    device_uid = node_device().device_uid
    instance_uids = sorted(str(source.SOPInstanceUID) for source in sources)
    return build_not_analysed_report(
        sources,
        reason_code=reason_code,
        reason=reason,
        series_instance_uid=_uid(study_uid, device_uid, "notice-series"),
        sop_instance_uid=_uid(study_uid, device_uid, reason_code, *instance_uids),
        series_number=NOTICE_SERIES_NUMBER,
    )


def to_bytes(dataset: Dataset) -> bytes:
    """A Part 10 file's bytes (PS3.10), with the file meta highdicom prepared.

    The bytes ``dataset.save_as(..., enforce_file_format=True)`` writes, written faster
    (``workers.encode.part10``).
    """
    return to_part10(dataset)


def write_plain(folder: Path, dataset: Dataset) -> Path:
    """Write a result into a folder (offline ``analyze --out``), named by its SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset.Modality}_{dataset.SOPInstanceUID}.dcm"
    path.write_bytes(to_bytes(dataset))
    return path
