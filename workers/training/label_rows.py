"""What the training data readers share: the sample and skipped-row records, the labelled data
set, a candidate row before cleaning, CSV reading with file and line in every error, column and
label matching, and the CheXpert label value rule (Irvin et al. 2019)."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_node.intake import LATERAL_VIEWS

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

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_LATERAL = LATERAL_VIEWS | {"L"}
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": math.nan}


class DataError(ValueError):
    """An unreadable or inconsistent label file: the message names the file and the row (line
    number)."""


def data_error(file: Path | str, line: int, what: str) -> DataError:
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


@dataclass
class Candidate:
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
class ReadResult:
    labels: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, key: str, path: Path | None, row: int, code: str, reason: str) -> None:
        self.skipped.append(Skipped(key, path, row, code, reason))


def normalised(name: str) -> str:
    """Column and label names compare case-, space-, '_'- and '-'-insensitively."""
    return re.sub(r"[\s_\-]+", "", name).lower()


def read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and rows with their 1-based starting line (the header is line 1)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            reader = csv.reader(stream)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise data_error(path, 1, "empty file: no header row")
            rows: list[tuple[int, dict[str, str]]] = []
            start = reader.line_num + 1
            for values in reader:
                if any(v.strip() for v in values):
                    rows.append((start, _row_dict(path, start, header, values)))
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise data_error(path, 1, f"not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise data_error(path, reader.line_num, f"not a readable CSV ({exc})") from exc
    return header, rows


def _row_dict(path: Path, line: int, header: list[str], values: list[str]) -> dict[str, str]:
    extra = [v for v in values[len(header) :] if v.strip()]
    if extra:
        raise data_error(path, line, f"{len(values)} fields, the header has {len(header)}")
    values = values + [""] * (len(header) - len(values))
    return {h: v.strip() for h, v in zip(header, values, strict=False) if h}


def find_column(header: Sequence[str], *names: str) -> str | None:
    """The header's spelling of the first of ``names`` it has (compared with :func:`normalised`)."""
    by_norm = {normalised(h): h for h in header if h}
    for name in names:
        if normalised(name) in by_norm:
            return by_norm[normalised(name)]
    return None


def require_columns(path: Path, header: Sequence[str], *names: str) -> list[str]:
    found = [find_column(header, name) for name in names]
    missing = [name for name, col in zip(names, found, strict=True) if col is None]
    if missing:
        raise data_error(
            path,
            1,
            f"missing column(s) {', '.join(missing)}; the file has {', '.join(h for h in header)}",
        )
    return [col for col in found if col is not None]


def choose_labels(
    path: Path, available: Sequence[str], requested: Sequence[str] | None, what: str
) -> list[tuple[str, str]]:
    """(output label, source name) pairs; a requested label the source lacks is an error."""
    if requested is None:
        return [(name, name) for name in available]
    by_norm = {normalised(name): name for name in available}
    missing = [label for label in requested if normalised(label) not in by_norm]
    if missing:
        raise data_error(
            path,
            1,
            f"no {what} for label(s) {', '.join(missing)}; available: {', '.join(available)}",
        )
    return [(label, by_norm[normalised(label)]) for label in requested]


def label_value(path: Path, line: int, column: str, text: str, uncertain: str) -> float:
    """CheXpert label value: 1 positive, 0 negative, -1 uncertain, blank unknown (Irvin et al.
    2019); uncertain becomes NaN (U-Ignore), 0 (U-Zeros) or 1 (U-Ones)."""
    try:
        value = _VALUES[text.strip()]
    except KeyError:
        raise data_error(
            path, line, f"column {column!r}: value {text!r} is not 1, 0, -1 or blank"
        ) from None
    if value == -1.0:
        return {"ignore": math.nan, "zeros": 0.0, "ones": 1.0}[uncertain]
    return value


def is_lateral(view: str | None) -> bool:
    return view is not None and view.strip().upper() in _LATERAL


def first_existing(paths: Iterable[Path]) -> Path | None:
    for candidate in paths:
        if candidate.is_file():
            return candidate.resolve()
    return None
