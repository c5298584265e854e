"""Labelled chest X-ray data for training and evaluation: readers, cleaning, patient splits.

Six sources are read into one shape (:class:`LabelledData`): CheXpert CSVs (Irvin et al. 2019,
AAAI, arXiv:1901.07031), NIH ChestX-ray14 ``Data_Entry_2017.csv`` (Wang et al. 2017, CVPR),
class folders (e.g. Kermany et al. 2018 pediatric pneumonia), a DICOM folder with a label CSV,
the ieee8023 covid-chestxray-dataset ``metadata.csv`` (Cohen et al. 2020, arXiv:2006.11988) and
the Hannover MHH COVID-19 subset (Winther et al. 2020). The cleaning is the same for all of them:
frontal views only (the node's eligibility rules), missing, unreadable and duplicate images
dropped, at least one known label per image; every dropped row is kept with a reason code.

Pixels are not decoded here (that happens in the training data loader); images are only checked
to open. Splits are by patient, never by image, so that one patient's images never end up on both
sides of an evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pydicom
from PIL import Image

from workers.training.label_rows import (
    DICOM_EXTENSIONS,
    FORMATS,
    IMAGE_EXTENSIONS,
    NIH_LABELS,
    UNCERTAIN_POLICIES,
    Candidate,
    DataError,
    LabelledData,
    ReadResult,
    Sample,
    Skipped,
    data_error,
    is_lateral,
    label_value,
    normalised,
)
from workers.training.readers import (
    read_chexpert,
    read_covid,
    read_dicom,
    read_folders,
    read_mhh,
    read_nih,
)
from workers.training.splits import read_split, split_by_patient, write_split

__all__ = [
    "FORMATS",
    "NIH_LABELS",
    "UNCERTAIN_POLICIES",
    "DataError",
    "LabelledData",
    "Sample",
    "Skipped",
    "guess_format",
    "label_value",
    "read_labelled_data",
    "read_split",
    "split_by_patient",
    "write_split",
]


# --- guessing the format -----------------------------------------------------------------------


def guess_format(data: Path) -> str:
    """The format of ``data`` (a label CSV or a folder) from its header or its layout."""
    data = Path(data)
    if data.is_dir():
        return _guess_folder(data)
    if not data.is_file():
        raise DataError(f"{data}: no such file or folder")
    header, _ = _read_csv_header(data)
    columns = {normalised(h) for h in header}
    checks = (
        ("nih", {"imageindex", "findinglabels"}),
        ("covid", {"patientid", "finding", "filename"}),
        ("mhh", {"patientid", "imageid"}),
        ("chexpert", {"path"}),
    )
    for fmt, needed in checks:
        if needed <= columns:
            return fmt
    if columns & {"sopinstanceuid", "accessionnumber"}:
        return "dicom"
    raise data_error(data, 1, f"cannot tell the format from the columns {', '.join(header)}")


def _read_csv_header(path: Path) -> tuple[list[str], int]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            header = next(csv.reader(stream), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise data_error(path, 1, f"not a readable CSV ({exc})") from exc
    if not any(header):
        raise data_error(path, 1, "empty file: no header row")
    return [h.strip() for h in header], 1


def _guess_folder(folder: Path) -> str:
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) == 1 and _is_dicom_csv(csvs[0]):
        return "dicom"
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(_images_in(sub) for sub in subfolders):
        return "folders"
    if csvs:
        return "dicom"
    raise DataError(f"{folder}: neither class folders of images nor DICOM files with a CSV")


def _is_dicom_csv(path: Path) -> bool:
    try:
        return guess_format(path) == "dicom"
    except DataError:
        return False


def _images_in(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file())


# --- cleaning ----------------------------------------------------------------------------------


def _clean(read: ReadResult, check_images: bool) -> tuple[list[Candidate], list[Skipped]]:
    """Lateral views, no known label, missing/non-image/unreadable files and duplicates out."""
    kept: list[Candidate] = []
    by_key: dict[str, Candidate] = {}
    for c in read.candidates:
        reason = _row_refusal(c, check_images)
        if reason is None and c.key in by_key:
            reason = ("DUPLICATE", f"same key as line {by_key[c.key].row} ({c.key})")
        if reason is not None:
            read.skip(c.key, c.path, c.row, *reason)
            continue
        by_key[c.key] = c
        kept.append(c)
    kept = _drop_same_content(kept, read)
    return kept, read.skipped


def _row_refusal(c: Candidate, check_images: bool) -> tuple[str, str] | None:
    if is_lateral(c.view):
        return "LATERAL_VIEW", f"view {c.view}: the model reads frontal (PA/AP) images"
    if all(math.isnan(v) for v in c.labels.values()):
        return "NO_KNOWN_LABELS", "no label of this image is known"
    if c.path is None:
        return "NO_IMAGE", c.missing or "image file not found"
    if c.checked:
        return None
    suffix = c.path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS | DICOM_EXTENSIONS:
        return "NOT_AN_IMAGE", f"{c.path.name}: not a PNG, JPEG or DICOM file name"
    if check_images:
        problem = _unreadable(c.path)
        if problem:
            return "UNREADABLE", problem
    return None


def _unreadable(path: Path) -> str:
    """'' when the file opens (PIL verify for PNG/JPEG, pydicom for DICOM), else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() in DICOM_EXTENSIONS:
                pydicom.dcmread(path, stop_before_pixels=True)
            else:
                with Image.open(path) as image:
                    image.verify()
    except Exception as exc:  # a damaged file may raise anything; it is reported, not fatal
        return f"{type(exc).__name__}: {exc}"
    return ""


def _drop_same_content(kept: list[Candidate], read: ReadResult) -> list[Candidate]:
    """Later copies of the same bytes (sha256, computed only where sizes are equal) go."""
    sizes: dict[int, list[Candidate]] = defaultdict(list)
    for c in kept:
        assert c.path is not None
        sizes[c.path.stat().st_size].append(c)
    first: dict[str, Candidate] = {}
    dropped: set[int] = set()
    for group in sizes.values():
        if len(group) < 2:
            continue
        for c in group:
            assert c.path is not None
            digest = hashlib.sha256(c.path.read_bytes()).hexdigest()
            if digest in first:
                original = first[digest]
                why = f"same image content as {original.key} (line {original.row})"
                read.skip(c.key, c.path, c.row, "DUPLICATE", why)
                dropped.add(id(c))
            else:
                first[digest] = c
    return [c for c in kept if id(c) not in dropped]


# --- the entry point ---------------------------------------------------------------------------


def read_labelled_data(
    data: Path,
    *,
    images_root: Path | None = None,
    fmt: str | None = None,
    labels: Sequence[str] | None = None,
    uncertain: str = "ignore",
    check_images: bool = True,
) -> LabelledData:
    """Read a labelled data set (``fmt`` one of :data:`FORMATS`, guessed when None) and clean
    it. ``images_root`` defaults to the label file's folder (for dicom given as a folder, that
    folder; folders data are always read from ``data``); ``uncertain`` is a CheXpert policy of
    :data:`UNCERTAIN_POLICIES`. Raises :class:`DataError` for a label file it cannot use."""
    data = Path(data)
    fmt = fmt or guess_format(data)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"unknown uncertainty policy {uncertain!r}; one of {UNCERTAIN_POLICIES}")
    label_file = _label_file(data, fmt)
    root = Path(images_root) if images_root is not None else _default_root(data, label_file)
    read = _dispatch(fmt, label_file, root.resolve(), labels, uncertain)
    kept, skipped = _clean(read, check_images)
    samples = [_sample(c) for c in kept]
    unknown = sum(1 for c in kept if not c.patient or not c.patient_known)
    skipped.sort(key=lambda s: (s.row, s.key))
    source = label_file if fmt != "folders" else data
    return LabelledData(fmt, source, read.labels, samples, skipped, unknown, read.notes)


def _label_file(data: Path, fmt: str) -> Path:
    if fmt == "folders":
        if not data.is_dir():
            raise DataError(f"{data}: the folders format needs a folder of class folders")
        return data
    if fmt == "dicom" and data.is_dir():
        csvs = sorted(data.glob("*.csv"))
        if len(csvs) != 1:
            raise DataError(f"{data}: expected exactly one label CSV, found {len(csvs)}")
        return csvs[0]
    if not data.is_file():
        raise DataError(f"{data}: no such label file")
    return data


def _default_root(data: Path, label_file: Path) -> Path:
    return data if data.is_dir() else label_file.parent


def _dispatch(
    fmt: str, label_file: Path, root: Path, labels: Sequence[str] | None, uncertain: str
) -> ReadResult:
    if fmt == "chexpert":
        return read_chexpert(label_file, root, labels, uncertain)
    if fmt == "nih":
        return read_nih(label_file, root, labels)
    if fmt == "folders":
        return read_folders(label_file, labels)
    if fmt == "dicom":
        return read_dicom(label_file, root, labels, uncertain)
    if fmt == "covid":
        return read_covid(label_file, root, labels)
    return read_mhh(label_file, root, labels)


def _sample(c: Candidate) -> Sample:
    assert c.path is not None
    patient = c.patient or c.key
    return Sample(c.path, patient, dict(c.labels), c.key, c.view, c.row, c.source)
