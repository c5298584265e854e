"""``cxr-node analyze FILE...``: the same analysis, offline, no network.

DICOM files are read as they are. PNG/JPEG files are wrapped first in a Secondary Capture
(PS3.3 A.8) with new UIDs and no patient identity, so that the SR and SC have a source to
reference; that wrapper is written to ``--out`` beside them.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from cxr_node.errors import RejectedInput
from cxr_node.logs import traceback_frames
from cxr_node.settings import Settings
from workers.analysis import Analyzer
from workers.results import encode_results, write_plain

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

INTERNAL_ERROR = "INTERNAL_ERROR"
"""Reason code of a file whose analysis raised an exception we did not expect (a bug): it is
logged with its traceback frames (never its message, which may quote header values)."""

log = logging.getLogger(__name__)


def image_to_dataset(path: Path) -> Dataset:
    """Wrap a PNG/JPEG radiograph in a Secondary Capture Image (highdicom) with new UIDs."""
    with Image.open(path) as image:
        gray = image.convert("I;16") if image.mode in {"I", "I;16"} else image.convert("L")
        pixels = np.asarray(gray)
    bits = 16 if pixels.dtype != np.uint8 else 8
    pixels = pixels.astype(np.uint16 if bits == 16 else np.uint8)
    study_uid = generate_uid()
    dataset = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=bits,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=1,
        instance_number=1,
        manufacturer="cxr-node (wrapped image file)",
        patient_orientation=("L", "F"),
        patient_name="ANONYMOUS^",
        patient_id="ANONYMOUS",
        series_description=f"wrapped {path.suffix.lower()} image",
    )
    dataset.BodyPartExamined = "CHEST"
    return dataset


def read_source(path: Path) -> Dataset:
    """A DICOM file as it is, or an image file wrapped as Secondary Capture."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_to_dataset(path)
    try:
        return dcmread(path)
    except Exception as exc:
        raise RejectedInput(
            "UNREADABLE", f"not a readable DICOM file ({type(exc).__name__})"
        ) from None


def analyze_files(
    settings: Settings, files: list[Path], as_json: bool, out_dir: Path | None
) -> int:
    """Analyse each file; print findings (or JSON); write SR and SC to ``out_dir``.

    Each file gets its own entry, analysed or refused (``error``/``reason_code`` and
    ``reason``): one file's failure, even an unexpected exception, never costs the others.
    Exit status 1 only when no file at all was analysed.
    """
    analyzer = Analyzer(settings)
    reports: list[dict[str, Any]] = []
    failures = 0
    for index, path in enumerate(files):
        try:
            report = _analyze_one(analyzer, path, out_dir)
        except RejectedInput as exc:
            report = _refusal(path, exc.reason_code, exc.reason)
        except Exception as exc:  # one file's bug must not cost the others
            log.error(
                "file %d of %d: unexpected error, not analysed: %s",
                index + 1,
                len(files),
                traceback_frames(exc),
            )
            report = _refusal(
                path, INTERNAL_ERROR, f"internal error while analysing ({type(exc).__name__})"
            )
        if "error" in report:
            failures += 1
        reports.append(report)
    if as_json:
        print(json.dumps(reports if len(reports) != 1 else reports[0], indent=2))
    else:
        for report in reports:
            _print_human(report)
    return 1 if failures == len(files) else 0


def _refusal(path: Path, reason_code: str, reason: str) -> dict[str, Any]:
    return {"file": str(path), "error": reason_code, "reason_code": reason_code, "reason": reason}


def _analyze_one(analyzer: Analyzer, path: Path, out_dir: Path | None) -> dict[str, Any]:
    """One file's report; with ``out_dir``, its results are all encoded before any is written,
    so an encoder failure refuses the file rather than leaving half its outputs."""
    source = read_source(path)
    analysed = analyzer.analyse(source)
    report: dict[str, Any] = {"file": str(path), **analysed.analysis.model_dump(mode="json")}
    if out_dir is not None:
        results = encode_results(source, analysed)
        written = []
        if path.suffix.lower() in IMAGE_SUFFIXES:
            written.append(write_plain(out_dir, source))
        written += [write_plain(out_dir, ds) for _, ds in results]
        report["written"] = [str(p) for p in written]
    return report


def _print_human(report: dict[str, Any]) -> None:
    out = sys.stdout
    if "error" in report:
        print(f"{report['file']}: not analysed: {report['error']}: {report['reason']}", file=out)
        return
    model = report["model"]
    demo = "  [DEMO MODEL - NOT TRAINED - NOT FOR CLINICAL USE]" if model["demo"] else ""
    print(f"{report['file']}{demo}", file=out)
    print(
        f"  abnormality score {report['abnormality_score']:.3f}, priority {report['priority']}",
        file=out,
    )
    for finding in sorted(report["findings"], key=lambda f: -f["probability"]):
        mark = "POSITIVE" if finding["positive"] else ""
        print(
            f"  {finding['label']:<28} {finding['probability']:.3f} "
            f"(threshold {finding['threshold']:.2f}) {mark}",
            file=out,
        )
    for path in report.get("written", []):
        print(f"  wrote {path}", file=out)
    print("  AI-generated; not a diagnosis.", file=out)
