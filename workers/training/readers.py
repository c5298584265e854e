"""The six label sources read into candidate rows, before the cleaning of
:mod:`workers.training.datasets`: CheXpert CSVs (Irvin et al. 2019), NIH ChestX-ray14
``Data_Entry_2017.csv`` (Wang et al. 2017), class folders, a DICOM folder with a label CSV, the
ieee8023 covid-chestxray-dataset ``metadata.csv`` (Cohen et al. 2020) and the Hannover MHH
COVID-19 subset (Winther et al. 2020)."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from cxr_node.intake import evaluate
from workers.training.label_rows import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    NIH_LABELS,
    Candidate,
    DataError,
    ReadResult,
    choose_labels,
    data_error,
    find_column,
    first_existing,
    label_value,
    normalised,
    read_csv,
    require_columns,
)

MHH_LABEL = "COVID-19"
_NORMAL_FOLDERS = frozenset({"normal", "nofinding", "negative"})
_NO_FINDING = "nofinding"
_PATIENT_PREFIX = re.compile(r"^((?:patient|person)\d+)", re.IGNORECASE)
_PATIENT_COMPONENT = re.compile(r"^patient\d+$", re.IGNORECASE)
_IGNORED_IN_DICOM_FOLDER = frozenset({".csv", ".txt", ".md", ".json"})
_CHEXPERT_META = frozenset(
    {"path", "sex", "age", "frontal/lateral", "ap/pa", "patientid", "study", "studyid", "view"}
)
_DICOM_META = frozenset(
    {
        "sopinstanceuid",
        "accessionnumber",
        "patientid",
        "studyinstanceuid",
        "seriesinstanceuid",
        "viewposition",
        "path",
        "file",
        "filename",
    }
)


# --- CheXpert -------------------------------------------------------------------------------


def read_chexpert(
    path: Path, root: Path, labels: Sequence[str] | None, uncertain: str
) -> ReadResult:
    """CheXpert (Irvin et al. 2019): ``Path`` plus one column per observation, values 1/0/-1/
    blank; ``Frontal/Lateral`` Lateral rows are skipped. Paths are tried below ``root`` as
    written and without their first component (the CSV lives inside CheXpert-v1.0-small/)."""
    header, rows = read_csv(path)
    (path_col,) = require_columns(path, header, "Path")
    meta = [h for h in header if h and normalised(h) not in _CHEXPERT_META]
    chosen = choose_labels(path, meta, labels, "column")
    read = ReadResult(labels=[label for label, _ in chosen])
    patient_col = find_column(header, "Patient ID", "PatientID")
    view_col, frontal_col = find_column(header, "AP/PA"), find_column(header, "Frontal/Lateral")
    for line, row in rows:
        key = row[path_col]
        if not key:
            raise data_error(path, line, "empty Path")
        values = {out: label_value(path, line, src, row[src], uncertain) for out, src in chosen}
        if frontal_col and row[frontal_col].lower() == "lateral":
            read.skip(key, None, line, "LATERAL_VIEW", "Frontal/Lateral says Lateral")
            continue
        relative = Path(key)
        image = first_existing([root / relative, root / Path(*relative.parts[1:])])
        patient = row[patient_col] if patient_col else _chexpert_patient(relative)
        view = (row[view_col] or None) if view_col else None
        read.candidates.append(
            Candidate(key, image, patient, values, view, line, str(path), f"no file {key}")
        )
    return read


def _chexpert_patient(relative: Path) -> str:
    return next((p for p in relative.parts if _PATIENT_COMPONENT.match(p)), "")


# --- NIH ChestX-ray14 ----------------------------------------------------------------------


class _FileIndex:
    """Image files under a root and up to two folder levels below (NIH ships
    images_001/images/...), indexed once by name and by name prefix."""

    def __init__(self, root: Path) -> None:
        self.by_name: dict[str, list[Path]] = defaultdict(list)
        self.by_prefix: dict[str, list[Path]] = defaultdict(list)
        for file in self._walk(root, depth=2):
            self.by_name[file.name].append(file)
            stem = file.name.rsplit(".", 1)[0]
            for match in re.finditer(r"[-_]", stem):
                self.by_prefix[stem[: match.start()]].append(file)

    @staticmethod
    def _walk(folder: Path, depth: int) -> Iterable[Path]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and depth > 0:
                yield from _FileIndex._walk(Path(entry.path), depth - 1)
            elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield Path(entry.path)

    def find(self, name: str) -> tuple[Path | None, str]:
        """The file named ``name``, else the only file whose name is the stem of ``name``
        followed by '-' or '_' (``00000001_000-Cardiomegaly.png`` for ``00000001_000.png``)."""
        exact = self.by_name.get(name, [])
        if len(exact) == 1:
            return exact[0].resolve(), ""
        if len(exact) > 1:
            return None, f"{len(exact)} files are named {name}"
        similar = self.by_prefix.get(name.rsplit(".", 1)[0], [])
        if len(similar) == 1:
            return similar[0].resolve(), ""
        if len(similar) > 1:
            return None, f"{len(similar)} files could be {name}"
        return None, f"no file {name}"


def read_nih(path: Path, root: Path, labels: Sequence[str] | None) -> ReadResult:
    """NIH ChestX-ray14 (Wang et al. 2017): ``Finding Labels`` joined by '|', "No Finding" is
    negative for all 14; ``Pleural Thickening`` and ``Pleural_Thickening`` are the same."""
    header, rows = read_csv(path)
    index_col, findings_col = require_columns(path, header, "Image Index", "Finding Labels")
    patient_col, view_col = find_column(header, "Patient ID"), find_column(header, "View Position")
    chosen = choose_labels(path, NIH_LABELS, labels, "NIH finding")
    read = ReadResult(labels=[label for label, _ in chosen])
    known = {normalised(name) for name in NIH_LABELS}
    files = _FileIndex(root)
    for line, row in rows:
        key = row[index_col]
        if not key:
            raise data_error(path, line, "empty Image Index")
        found = _nih_findings(path, line, row[findings_col], known)
        values = {out: 1.0 if normalised(src) in found else 0.0 for out, src in chosen}
        if "/" in key:
            image, missing = first_existing([root / key]), f"no file {key}"
        else:
            image, missing = files.find(key)
        patient = row[patient_col] if patient_col else ""
        view = (row[view_col] or None) if view_col else None
        read.candidates.append(
            Candidate(key, image, patient, values, view, line, str(path), missing)
        )
    return read


def _nih_findings(path: Path, line: int, text: str, known: set[str]) -> set[str]:
    found = {normalised(part) for part in text.split("|") if part.strip()}
    if not found:
        raise data_error(path, line, "empty Finding Labels")
    unknown = found - known - {_NO_FINDING}
    if unknown:
        raise data_error(path, line, f"unknown finding(s) in {text!r}")
    return found - {_NO_FINDING}


# --- class folders ---------------------------------------------------------------------------


def read_folders(root: Path, labels: Sequence[str] | None) -> ReadResult:
    """One subfolder per class (e.g. Kermany et al. 2018: NORMAL/, PNEUMONIA/); normal-like
    folders mean all-negative. Patient from a ``personN``/``patientN`` file-name prefix, else
    unknown (the file stem stands in, so splits are by image)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders")
    positive = [c.name for c in classes if normalised(c.name) not in _NORMAL_FOLDERS]
    chosen = choose_labels(root, positive, labels, "class folder")
    if not chosen:
        raise DataError(f"{root}: only normal folders, no label to learn")
    read = ReadResult(labels=[label for label, _ in chosen])
    for folder in classes:
        values = {out: 1.0 if src == folder.name else 0.0 for out, src in chosen}
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            read.candidates.append(_folder_candidate(root, folder, file, values))
    return read


def _folder_candidate(root: Path, folder: Path, file: Path, values: dict[str, float]) -> Candidate:
    key = file.relative_to(root).as_posix()
    match = _PATIENT_PREFIX.match(file.name)
    patient = match.group(1) if match else file.stem
    return Candidate(
        key, file.resolve(), patient, dict(values), None, 0, str(folder), patient_known=bool(match)
    )


# --- DICOM folder with a label CSV -----------------------------------------------------------


def read_dicom(path: Path, root: Path, labels: Sequence[str] | None, uncertain: str) -> ReadResult:
    """DICOM files below ``root`` labelled by a CSV keyed by SOPInstanceUID or AccessionNumber
    (CheXpert value rules). Every file is judged by the node's eligibility rules
    (cxr_node.intake.evaluate). PatientID is only used, pseudonymised, for the split."""
    header, rows = read_csv(path)
    by_sop = find_column(header, "SOPInstanceUID", "SOP Instance UID")
    key_col = by_sop or find_column(header, "AccessionNumber")
    if key_col is None:
        raise data_error(path, 1, "missing column SOPInstanceUID or AccessionNumber")
    available = [h for h in header if h and normalised(h) not in _DICOM_META]
    chosen = choose_labels(path, available, labels, "column")
    read = ReadResult(labels=[label for label, _ in chosen])
    table: dict[str, tuple[int, dict[str, float]]] = {}
    for line, row in rows:
        key = row[key_col]
        if not key:
            raise data_error(path, line, f"empty {key_col}")
        values = {out: label_value(path, line, src, row[src], uncertain) for out, src in chosen}
        if key in table:
            kept = table[key][0]
            read.skip(key, None, line, "DUPLICATE", f"{key_col} repeats line {kept}")
            continue
        table[key] = (line, values)
    matched = _scan_dicoms(path, root, table, by_sop is not None, read)
    for key, (line, _) in table.items():
        if key not in matched:
            read.skip(key, None, line, "NO_IMAGE", f"no DICOM file has {key_col} {key}")
    read.candidates.sort(key=lambda c: (c.row, str(c.path)))
    return read


def _scan_dicoms(
    label_file: Path,
    root: Path,
    table: Mapping[str, tuple[int, dict[str, float]]],
    by_sop: bool,
    read: ReadResult,
) -> set[str]:
    matched: set[str] = set()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        if _ignored_in_dicom_folder(root, file, label_file):
            continue
        ds = _read_dicom_header(file, read)
        if ds is None:
            continue
        sop = str(ds.get("SOPInstanceUID", "") or "") or file.relative_to(root).as_posix()
        label_key = sop if by_sop else str(ds.get("AccessionNumber", "") or "")
        if label_key in table:
            matched.add(label_key)
        decision = evaluate(ds)
        if not decision.eligible:
            read.skip(sop, file, 0, decision.reason_code or "INELIGIBLE", decision.reason or "")
            continue
        if label_key not in table:
            read.skip(sop, file, 0, "NO_LABELS", "no row of the label file names this image")
            continue
        line, values = table[label_key]
        read.candidates.append(_dicom_candidate(ds, file, sop, line, values, label_file))
    return matched


def _ignored_in_dicom_folder(root: Path, file: Path, label_file: Path) -> bool:
    hidden = any(part.startswith(".") for part in file.relative_to(root).parts)
    return (
        hidden
        or file.resolve() == label_file.resolve()
        or file.name.upper() == "DICOMDIR"
        or file.suffix.lower() in _IGNORED_IN_DICOM_FOLDER
    )


def _read_dicom_header(file: Path, read: ReadResult) -> pydicom.Dataset | None:
    """The data set with large values deferred (so PixelData is seen but not loaded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(file, defer_size="1 KB")
    except InvalidDicomError:
        if file.suffix.lower() in DICOM_EXTENSIONS:
            read.skip(file.name, file, 0, "UNREADABLE", "InvalidDicomError: not a DICOM file")
        else:
            read.skip(file.name, file, 0, "NOT_AN_IMAGE", "not a DICOM file")
    except Exception as exc:  # a damaged file may raise anything; it is reported, not fatal
        read.skip(file.name, file, 0, "UNREADABLE", f"{type(exc).__name__}: {exc}")
    return None


def _dicom_candidate(
    ds: pydicom.Dataset, file: Path, sop: str, line: int, values: dict[str, float], source: Path
) -> Candidate:
    patient_id = str(ds.get("PatientID", "") or "").strip()
    patient = _pseudonym(patient_id) if patient_id else ""
    view = str(ds.get("ViewPosition", "") or "").strip() or None
    return Candidate(
        sop, file.resolve(), patient, dict(values), view, line, str(source), checked=True
    )


def _pseudonym(patient_id: str) -> str:
    """A stable stand-in for a PatientID, so that splits files and summaries never hold it."""
    return "patient-" + hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:16]


# --- covid-chestxray-dataset -----------------------------------------------------------------


def read_covid(path: Path, root: Path, labels: Sequence[str] | None) -> ReadResult:
    """ieee8023 covid-chestxray-dataset ``metadata.csv`` (Cohen et al. 2020): ``finding`` split
    on '/' gives the labels ("No Finding": all negative); CT rows are skipped (NOT_XRAY)."""
    header, rows = read_csv(path)
    patient_col, finding_col, view_col, modality_col, file_col = require_columns(
        path, header, "patientid", "finding", "view", "modality", "filename"
    )
    folder_col = find_column(header, "folder")
    seen: dict[str, str] = {}
    for _, row in rows:
        for part in _covid_findings(row[finding_col]):
            seen.setdefault(normalised(part), part)
    available = sorted((v for k, v in seen.items() if k != _NO_FINDING), key=str.lower)
    chosen = choose_labels(path, available, labels, "finding")
    read = ReadResult(labels=[label for label, _ in chosen])
    for line, row in rows:
        folder, name = (row[folder_col] if folder_col else ""), row[file_col]
        key = f"{folder}/{name}" if folder else name
        if normalised(row[modality_col]) != "xray":
            read.skip(key, None, line, "NOT_XRAY", f"modality {row[modality_col]!r}")
            continue
        found = {normalised(part) for part in _covid_findings(row[finding_col])}
        values = {out: 1.0 if normalised(src) in found else 0.0 for out, src in chosen}
        image = first_existing([root / folder / name, root / name]) if name else None
        view = row[view_col] or None
        missing = f"no file {key}"
        read.candidates.append(
            Candidate(key, image, row[patient_col], values, view, line, str(path), missing)
        )
    return read


def _covid_findings(text: str) -> list[str]:
    return [part.strip() for part in text.split("/") if part.strip()]


# --- Hannover MHH COVID-19 -------------------------------------------------------------------


def read_mhh(path: Path, root: Path, labels: Sequence[str] | None) -> ReadResult:
    """Hannover Medical School COVID-19 chest X-rays (Winther et al. 2020): every patient of the
    cohort had COVID-19, so "COVID-19" = 1 is a cohort label, not a per-image finding."""
    header, rows = read_csv(path)
    patient_col, image_col = require_columns(path, header, "patient_id", "image_id")
    modality_col, view_col = find_column(header, "modality"), find_column(header, "projection")
    chosen = choose_labels(path, [MHH_LABEL], labels, "label (only COVID-19)")
    read = ReadResult(labels=[label for label, _ in chosen])
    read.notes.append(
        "MHH: COVID-19 = 1 for every image is a cohort label (all patients had COVID-19), "
        "not a per-image finding; there are no negatives"
    )
    for line, row in rows:
        key = row[image_col]
        if not key:
            raise data_error(path, line, "empty image_id")
        if modality_col and row[modality_col].upper() not in {"CR", "DX"}:
            read.skip(key, None, line, "NOT_XRAY", f"modality {row[modality_col]!r}")
            continue
        image = first_existing([root / "png" / f"{key}.png", root / f"{key}.png"])
        view = (row[view_col] or None) if view_col else None
        values = dict.fromkeys(read.labels, 1.0)
        read.candidates.append(
            Candidate(key, image, row[patient_col], values, view, line, str(path), f"no file {key}")
        )
    return read
