"""Splits by patient, never by image, so that one patient's images are never on both sides of
an evaluation; written to and read from ``split.csv``."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.training.label_rows import (
    Sample,
    data_error,
    read_csv,
    require_columns,
)


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
    header, rows = read_csv(path)
    split_col, key_col = require_columns(path, header, "split", "key")
    by_key = {s.key: s for s in samples}
    assigned: dict[str, str] = {}
    patient_split: dict[str, str] = {}
    for line, row in rows:
        name, key = row[split_col], row[key_col]
        if key not in by_key:
            raise data_error(path, line, f"key {key!r} is not among the samples")
        if key in assigned:
            raise data_error(path, line, f"key {key!r} appears twice")
        other = patient_split.setdefault(by_key[key].patient, name)
        if other != name:
            raise data_error(path, line, f"{key!r} puts a patient in {name!r} who is in {other!r}")
        assigned[key] = name
    result: dict[str, list[Sample]] = {"train": [], "validation": []}
    for name in assigned.values():
        result.setdefault(name, [])
    for s in samples:
        if s.key in assigned:
            result[assigned[s.key]].append(s)
    return result
