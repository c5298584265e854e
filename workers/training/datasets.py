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
import os
import random
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from cxr_node.intake import LATERAL_VIEWS, evaluate

__all__ = [
    "FORMATS",
    "NIH_LABELS",
    "UNCERTAIN_POLICIES",
    "DataError",
    "LabelledData",
    "Sample",
    "Skipped",
    "guess_format",
    "read_labelled_data",
    "read_split",
    "split_by_patient",
    "write_split",
]

FORMATS = ("chexpert", "nih", "folders", "dicom", "covid", "mhh")
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
"""CheXpert uncertainty policies U-Ignore, U-Zeros, U-Ones (Irvin et al. 2019, section 4)."""

NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The 14 findings of NIH ChestX-ray14 (Wang et al. 2017), as spelled in Data_Entry_2017.csv."""

MHH_LABEL = "COVID-19"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_LATERAL = LATERAL_VIEWS | {"L"}
_NORMAL_FOLDERS = frozenset({"normal", "nofinding", "negative"})
_NO_FINDING = "nofinding"
_PATIENT_PREFIX = re.compile(r"^((?:patient|person)\d+)", re.IGNORECASE)
_PATIENT_COMPONENT = re.compile(r"^patient\d+$", re.IGNORECASE)
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
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan}
_IGNORED_IN_DICOM_FOLDER = frozenset({".csv", ".txt", ".md", ".json"})


class DataError(ValueError):
    """An unreadable or inconsistent label file: the message names the file and the row (line
    number)."""


def _error(file: Path | str, line: int, what: str) -> DataError:
    return DataError(f"{file}, line {line}: {what}")


@dataclass(frozen=True)
class Sample:
    """One usable labelled image."""

    path: Path
    patient: str
    labels: dict[str, float]
    key: str
    view: str | None
    row: int
    source: str


@dataclass(frozen=True)
class Skipped:
    """A row or image that is not used, with a stable reason code and a readable reason."""

    key: str
    path: Path | None
    row: int
    reason_code: str
    reason: str


@dataclass
class LabelledData:
    """The usable samples of one source, what was skipped and why."""

    format: str
    source: Path
    labels: list[str]
    samples: list[Sample]
    skipped: list[Skipped]
    unknown_patients: int = 0
    """Samples whose patient is not known: their image key (or file stem) stands in for it."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[tuple[str, int]]:
        """("used", n), one ("skipped: CODE", n) per reason code, and the samples whose patient
        is unknown (their splits are by image)."""
        rows = [("used", len(self.samples))]
        counts = Counter(s.reason_code for s in self.skipped)
        rows += [(f"skipped: {code}", counts[code]) for code in sorted(counts)]
        if self.unknown_patients:
            rows.append(("patient unknown: split by image", self.unknown_patients))
        return rows

    def positives(self) -> dict[str, tuple[int, int, int]]:
        """Label -> (n positive, n negative, n unknown) over the used samples."""
        result: dict[str, tuple[int, int, int]] = {}
        for label in self.labels:
            values = [s.labels[label] for s in self.samples]
            unknown = sum(1 for v in values if math.isnan(v))
            positive = sum(1 for v in values if v == 1.0)
            result[label] = (positive, len(values) - positive - unknown, unknown)
        return result

    def summary_json(self) -> dict[str, Any]:
        """Everything in :meth:`summary` as JSON-ready data, with the skipped rows listed."""
        counts = Counter(s.reason_code for s in self.skipped)
        return {
            "format": self.format,
            "source": str(self.source),
            "labels": list(self.labels),
            "used": len(self.samples),
            "skipped_counts": {code: counts[code] for code in sorted(counts)},
            "per_label": {
                label: {"positive": p, "negative": n, "unknown": u}
                for label, (p, n, u) in self.positives().items()
            },
            "patients": len({s.patient for s in self.samples}),
            "patients_unknown": self.unknown_patients,
            "notes": list(self.notes),
            "skipped": [
                {"key": s.key, "row": s.row, "reason_code": s.reason_code, "reason": s.reason}
                for s in self.skipped
            ],
        }


# --- shared plumbing -------------------------------------------------------------------------


@dataclass
class _Candidate:
    """A labelled row (or image) before cleaning; ``path`` None when no image was found."""

    key: str
    path: Path | None
    patient: str
    labels: dict[str, float]
    view: str | None
    row: int
    source: str
    missing: str = ""
    checked: bool = False  # a DICOM already read and judged eligible
    patient_known: bool = True


@dataclass
class _Read:
    labels: list[str]
    candidates: list[_Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, key: str, path: Path | None, row: int, code: str, reason: str) -> None:
        self.skipped.append(Skipped(key, path, row, code, reason))


def _norm(name: str) -> str:
    """Column and label names compare case-, space-, '_'- and '-'-insensitively."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and rows with their 1-based starting line (the header is line 1)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            reader = csv.reader(stream)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise _error(path, 1, "empty file: no header row")
            rows: list[tuple[int, dict[str, str]]] = []
            start = reader.line_num + 1
            for values in reader:
                if any(v.strip() for v in values):
                    rows.append((start, _row_dict(path, start, header, values)))
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise _error(path, 1, f"not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise _error(path, reader.line_num, f"not a readable CSV ({exc})") from exc
    return header, rows


def _row_dict(path: Path, line: int, header: list[str], values: list[str]) -> dict[str, str]:
    extra = [v for v in values[len(header) :] if v.strip()]
    if extra:
        raise _error(path, line, f"{len(values)} fields, the header has {len(header)}")
    values = values + [""] * (len(header) - len(values))
    return {h: v.strip() for h, v in zip(header, values, strict=False) if h}


def _column(header: Sequence[str], *names: str) -> str | None:
    """The header's spelling of the first of ``names`` it has (compared with :func:`_norm`)."""
    by_norm = {_norm(h): h for h in header if h}
    for name in names:
        if _norm(name) in by_norm:
            return by_norm[_norm(name)]
    return None


def _require(path: Path, header: Sequence[str], *names: str) -> list[str]:
    found = [_column(header, name) for name in names]
    missing = [name for name, col in zip(names, found, strict=True) if col is None]
    if missing:
        raise _error(
            path,
            1,
            f"missing column(s) {', '.join(missing)}; the file has {', '.join(h for h in header)}",
        )
    return [col for col in found if col is not None]


def _choose_labels(
    path: Path, available: Sequence[str], requested: Sequence[str] | None, what: str
) -> list[tuple[str, str]]:
    """(output label, source name) pairs; a requested label the source lacks is an error."""
    if requested is None:
        return [(name, name) for name in available]
    by_norm = {_norm(name): name for name in available}
    missing = [label for label in requested if _norm(label) not in by_norm]
    if missing:
        raise _error(
            path,
            1,
            f"no {what} for label(s) {', '.join(missing)}; available: {', '.join(available)}",
        )
    return [(label, by_norm[_norm(label)]) for label in requested]


def label_value(path: Path, line: int, column: str, text: str, uncertain: str) -> float:
    """CheXpert label value: 1 positive, 0 negative, -1 uncertain, blank unknown (Irvin et al.
    2019); uncertain becomes NaN (U-Ignore), 0 (U-Zeros) or 1 (U-Ones)."""
    try:
        value = _VALUES[text.strip()]
    except KeyError:
        raise _error(
            path, line, f"column {column!r}: value {text!r} is not 1, 0, -1 or blank"
        ) from None
    if value == -1.0:
        return {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    return value


def _is_lateral(view: str | None) -> bool:
    return view is not None and view.strip().upper() in _LATERAL


def _first_existing(paths: Iterable[Path]) -> Path | None:
    for candidate in paths:
        if candidate.is_file():
            return candidate.resolve()
    return None


# --- guessing the format -----------------------------------------------------------------------


def guess_format(data: Path) -> str:
    """The format of ``data`` (a label CSV or a folder) from its header or its layout."""
    data = Path(data)
    if data.is_dir():
        return _guess_folder(data)
    if not data.is_file():
        raise DataError(f"{data}: no such file or folder")
    header, _ = _read_csv_header(data)
    columns = {_norm(h) for h in header}
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
    raise _error(data, 1, f"cannot tell the format from the columns {', '.join(header)}")


def _read_csv_header(path: Path) -> tuple[list[str], int]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            header = next(csv.reader(stream), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _error(path, 1, f"not a readable CSV ({exc})") from exc
    if not any(header):
        raise _error(path, 1, "empty file: no header row")
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


# --- CheXpert -------------------------------------------------------------------------------


def _read_chexpert(path: Path, root: Path, labels: Sequence[str] | None, uncertain: str) -> _Read:
    """CheXpert (Irvin et al. 2019): ``Path`` plus one column per observation, values 1/0/-1/
    blank; ``Frontal/Lateral`` Lateral rows are skipped. Paths are tried below ``root`` as
    written and without their first component (the CSV lives inside CheXpert-v1.0-small/)."""
    header, rows = _read_csv(path)
    (path_col,) = _require(path, header, "Path")
    meta = [h for h in header if h and _norm(h) not in _CHEXPERT_META]
    chosen = _choose_labels(path, meta, labels, "column")
    read = _Read(labels=[label for label, _ in chosen])
    patient_col = _column(header, "Patient ID", "PatientID")
    view_col, frontal_col = _column(header, "AP/PA"), _column(header, "Frontal/Lateral")
    for line, row in rows:
        key = row[path_col]
        if not key:
            raise _error(path, line, "empty Path")
        values = {out: label_value(path, line, src, row[src], uncertain) for out, src in chosen}
        if frontal_col and row[frontal_col].lower() == "lateral":
            read.skip(key, None, line, "LATERAL_VIEW", "Frontal/Lateral says Lateral")
            continue
        relative = Path(key)
        image = _first_existing([root / relative, root / Path(*relative.parts[1:])])
        patient = row[patient_col] if patient_col else _chexpert_patient(relative)
        view = (row[view_col] or None) if view_col else None
        read.candidates.append(
            _Candidate(key, image, patient, values, view, line, str(path), f"no file {key}")
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


def _read_nih(path: Path, root: Path, labels: Sequence[str] | None) -> _Read:
    """NIH ChestX-ray14 (Wang et al. 2017): ``Finding Labels`` joined by '|', "No Finding" is
    negative for all 14; ``Pleural Thickening`` and ``Pleural_Thickening`` are the same."""
    header, rows = _read_csv(path)
    index_col, findings_col = _require(path, header, "Image Index", "Finding Labels")
    patient_col, view_col = _column(header, "Patient ID"), _column(header, "View Position")
    chosen = _choose_labels(path, NIH_LABELS, labels, "NIH finding")
    read = _Read(labels=[label for label, _ in chosen])
    known = {_norm(name) for name in NIH_LABELS}
    files = _FileIndex(root)
    for line, row in rows:
        key = row[index_col]
        if not key:
            raise _error(path, line, "empty Image Index")
        found = _nih_findings(path, line, row[findings_col], known)
        values = {out: 1.0 if _norm(src) in found else 0.0 for out, src in chosen}
        if "/" in key:
            image, missing = _first_existing([root / key]), f"no file {key}"
        else:
            image, missing = files.find(key)
        patient = row[patient_col] if patient_col else ""
        view = (row[view_col] or None) if view_col else None
        read.candidates.append(
            _Candidate(key, image, patient, values, view, line, str(path), missing)
        )
    return read


def _nih_findings(path: Path, line: int, text: str, known: set[str]) -> set[str]:
    found = {_norm(part) for part in text.split("|") if part.strip()}
    if not found:
        raise _error(path, line, "empty Finding Labels")
    unknown = found - known - {_NO_FINDING}
    if unknown:
        raise _error(path, line, f"unknown finding(s) in {text!r}")
    return found - {_NO_FINDING}


# --- class folders ---------------------------------------------------------------------------


def _read_folders(root: Path, labels: Sequence[str] | None) -> _Read:
    """One subfolder per class (e.g. Kermany et al. 2018: NORMAL/, PNEUMONIA/); normal-like
    folders mean all-negative. Patient from a ``personN``/``patientN`` file-name prefix, else
    unknown (the file stem stands in, so splits are by image)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders")
    positive = [c.name for c in classes if _norm(c.name) not in _NORMAL_FOLDERS]
    chosen = _choose_labels(root, positive, labels, "class folder")
    if not chosen:
        raise DataError(f"{root}: only normal folders, no label to learn")
    read = _Read(labels=[label for label, _ in chosen])
    for folder in classes:
        values = {out: 1.0 if src == folder.name else 0.0 for out, src in chosen}
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(root).parts):
                continue
            read.candidates.append(_folder_candidate(root, folder, file, values))
    return read


def _folder_candidate(root: Path, folder: Path, file: Path, values: dict[str, float]) -> _Candidate:
    key = file.relative_to(root).as_posix()
    match = _PATIENT_PREFIX.match(file.name)
    patient = match.group(1) if match else file.stem
    return _Candidate(
        key, file.resolve(), patient, dict(values), None, 0, str(folder), patient_known=bool(match)
    )


# --- DICOM folder with a label CSV -----------------------------------------------------------


def _read_dicom(path: Path, root: Path, labels: Sequence[str] | None, uncertain: str) -> _Read:
    """DICOM files below ``root`` labelled by a CSV keyed by SOPInstanceUID or AccessionNumber
    (CheXpert value rules). Every file is judged by the node's eligibility rules
    (cxr_node.intake.evaluate). PatientID is only used, pseudonymised, for the split."""
    header, rows = _read_csv(path)
    by_sop = _column(header, "SOPInstanceUID", "SOP Instance UID")
    key_col = by_sop or _column(header, "AccessionNumber")
    if key_col is None:
        raise _error(path, 1, "missing column SOPInstanceUID or AccessionNumber")
    available = [h for h in header if h and _norm(h) not in _DICOM_META]
    chosen = _choose_labels(path, available, labels, "column")
    read = _Read(labels=[label for label, _ in chosen])
    table: dict[str, tuple[int, dict[str, float]]] = {}
    for line, row in rows:
        key = row[key_col]
        if not key:
            raise _error(path, line, f"empty {key_col}")
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
    read: _Read,
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


def _read_dicom_header(file: Path, read: _Read) -> pydicom.Dataset | None:
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
) -> _Candidate:
    patient_id = str(ds.get("PatientID", "") or "").strip()
    patient = _pseudonym(patient_id) if patient_id else ""
    view = str(ds.get("ViewPosition", "") or "").strip() or None
    return _Candidate(
        sop, file.resolve(), patient, dict(values), view, line, str(source), checked=True
    )


def _pseudonym(patient_id: str) -> str:
    """A stable stand-in for a PatientID, so that splits files and summaries never hold it."""
    return "patient-" + hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:16]


# --- covid-chestxray-dataset -----------------------------------------------------------------


def _read_covid(path: Path, root: Path, labels: Sequence[str] | None) -> _Read:
    """ieee8023 covid-chestxray-dataset ``metadata.csv`` (Cohen et al. 2020): ``finding`` split
    on '/' gives the labels ("No Finding": all negative); CT rows are skipped (NOT_XRAY)."""
    header, rows = _read_csv(path)
    patient_col, finding_col, view_col, modality_col, file_col = _require(
        path, header, "patientid", "finding", "view", "modality", "filename"
    )
    folder_col = _column(header, "folder")
    seen: dict[str, str] = {}
    for _, row in rows:
        for part in _covid_findings(row[finding_col]):
            seen.setdefault(_norm(part), part)
    available = sorted((v for k, v in seen.items() if k != _NO_FINDING), key=str.lower)
    chosen = _choose_labels(path, available, labels, "finding")
    read = _Read(labels=[label for label, _ in chosen])
    for line, row in rows:
        folder, name = (row[folder_col] if folder_col else ""), row[file_col]
        key = f"{folder}/{name}" if folder else name
        if _norm(row[modality_col]) != "xray":
            read.skip(key, None, line, "NOT_XRAY", f"modality {row[modality_col]!r}")
            continue
        found = {_norm(part) for part in _covid_findings(row[finding_col])}
        values = {out: 1.0 if _norm(src) in found else 0.0 for out, src in chosen}
        image = _first_existing([root / folder / name, root / name]) if name else None
        view = row[view_col] or None
        missing = f"no file {key}"
        read.candidates.append(
            _Candidate(key, image, row[patient_col], values, view, line, str(path), missing)
        )
    return read


def _covid_findings(text: str) -> list[str]:
    return [part.strip() for part in text.split("/") if part.strip()]


# --- Hannover MHH COVID-19 -------------------------------------------------------------------


def _read_mhh(path: Path, root: Path, labels: Sequence[str] | None) -> _Read:
    """Hannover Medical School COVID-19 chest X-rays (Winther et al. 2020): every patient of the
    cohort had COVID-19, so "COVID-19" = 1 is a cohort label, not a per-image finding."""
    header, rows = _read_csv(path)
    patient_col, image_col = _require(path, header, "patient_id", "image_id")
    modality_col, view_col = _column(header, "modality"), _column(header, "projection")
    chosen = _choose_labels(path, [MHH_LABEL], labels, "label (only COVID-19)")
    read = _Read(labels=[label for label, _ in chosen])
    read.notes.append(
        "MHH: COVID-19 = 1 for every image is a cohort label (all patients had COVID-19), "
        "not a per-image finding; there are no negatives"
    )
    for line, row in rows:
        key = row[image_col]
        if not key:
            raise _error(path, line, "empty image_id")
        if modality_col and row[modality_col].upper() not in {"CR", "DX"}:
            read.skip(key, None, line, "NOT_XRAY", f"modality {row[modality_col]!r}")
            continue
        image = _first_existing([root / "png" / f"{key}.png", root / f"{key}.png"])
        view = (row[view_col] or None) if view_col else None
        values = dict.fromkeys(read.labels, 1.0)
        read.candidates.append(
            _Candidate(
                key, image, row[patient_col], values, view, line, str(path), f"no file {key}"
            )
        )
    return read


# --- cleaning ----------------------------------------------------------------------------------


def _clean(read: _Read, check_images: bool) -> tuple[list[_Candidate], list[Skipped]]:
    """Lateral views, no known label, missing/non-image/unreadable files and duplicates out."""
    kept: list[_Candidate] = []
    by_key: dict[str, _Candidate] = {}
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


def _row_refusal(c: _Candidate, check_images: bool) -> tuple[str, str] | None:
    if _is_lateral(c.view):
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


def _drop_same_content(kept: list[_Candidate], read: _Read) -> list[_Candidate]:
    """Later copies of the same bytes (sha256, computed only where sizes are equal) go."""
    sizes: dict[int, list[_Candidate]] = defaultdict(list)
    for c in kept:
        assert c.path is not None
        sizes[c.path.stat().st_size].append(c)
    first: dict[str, _Candidate] = {}
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
) -> _Read:
    if fmt == "chexpert":
        return _read_chexpert(label_file, root, labels, uncertain)
    if fmt == "nih":
        return _read_nih(label_file, root, labels)
    if fmt == "folders":
        return _read_folders(label_file, labels)
    if fmt == "dicom":
        return _read_dicom(label_file, root, labels, uncertain)
    if fmt == "covid":
        return _read_covid(label_file, root, labels)
    return _read_mhh(label_file, root, labels)


def _sample(c: _Candidate) -> Sample:
    assert c.path is not None
    patient = c.patient or c.key
    return Sample(c.path, patient, dict(c.labels), c.key, c.view, c.row, c.source)


# --- splits ------------------------------------------------------------------------------------


def split_by_patient(
    samples: Sequence[Sample],
    validation_fraction: float = 0.2,
    seed: int = 0,
    test_fraction: float = 0.0,
) -> dict[str, list[Sample]]:
    """Whole patients to validation (then test) until each holds its fraction of the images;
    the rest to train. Sorted patient ids shuffled with ``random.Random(seed)``: deterministic."""
    if validation_fraction < 0 or test_fraction < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError("fractions must be >= 0 and leave some images for training")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.patient].append(s)
    patients = sorted(groups)
    random.Random(seed).shuffle(patients)
    targets = {
        "validation": validation_fraction * len(samples),
        "test": test_fraction * len(samples),
    }
    counts = dict.fromkeys(targets, 0)
    where: dict[str, str] = {}
    for patient in patients:
        name = next((n for n in targets if counts[n] < targets[n]), "train")
        where[patient] = name
        if name in counts:
            counts[name] += len(groups[patient])
    names = ["train", "validation"] + (["test"] if test_fraction > 0 else [])
    result: dict[str, list[Sample]] = {name: [] for name in names}
    for s in samples:
        result[where[s.patient]].append(s)
    return result


def write_split(path: Path, splits: Mapping[str, Sequence[Sample]]) -> None:
    """The split as CSV: ``split,key,patient,path`` (patient as in the sample: for DICOM data a
    pseudonym, never the PatientID)."""
    with Path(path).open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["split", "key", "patient", "path"])
        for name, members in splits.items():
            for s in members:
                writer.writerow([name, s.key, s.patient, str(s.path)])


def read_split(path: Path, samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """A split written by :func:`write_split`, applied to ``samples`` (matched by key). A key
    the samples lack, a key twice or a patient in two splits is an error; samples the file does
    not name are left out."""
    path = Path(path)
    header, rows = _read_csv(path)
    split_col, key_col = _require(path, header, "split", "key")
    by_key = {s.key: s for s in samples}
    assigned: dict[str, str] = {}
    patient_split: dict[str, str] = {}
    for line, row in rows:
        name, key = row[split_col], row[key_col]
        if key not in by_key:
            raise _error(path, line, f"key {key!r} is not among the samples")
        if key in assigned:
            raise _error(path, line, f"key {key!r} appears twice")
        other = patient_split.setdefault(by_key[key].patient, name)
        if other != name:
            raise _error(path, line, f"{key!r} puts a patient in {name!r} who is in {other!r}")
        assigned[key] = name
    result: dict[str, list[Sample]] = {"train": [], "validation": []}
    for name in assigned.values():
        result.setdefault(name, [])
    for s in samples:
        if s.key in assigned:
            result[assigned[s.key]].append(s)
    return result
