"""Labelled-data readers for training (workers.training.datasets): real corpus subsets and
constructed data sets.

The corpus subsets are read from $CXR_CORPUS (default ../shared/cxr-corpus next to the
repository); everything else is synthetic, made in tmp_path: small PNG/JPEG images drawn with
PIL and DICOM files built by tests.unit._synthetic.make_dx_chest. No real patient data.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image
from pydicom.uid import generate_uid

from tests.unit._synthetic import make_dx_chest
from workers.training.datasets import (
    FORMATS,
    NIH_LABELS,
    UNCERTAIN_POLICIES,
    DataError,
    LabelledData,
    Sample,
    guess_format,
    read_labelled_data,
    read_split,
    split_by_patient,
    write_split,
)

REPOSITORY = Path(__file__).resolve().parents[2]


def _corpus(relative: str) -> Path:
    root = Path(os.environ.get("CXR_CORPUS") or REPOSITORY.parent / "shared" / "cxr-corpus")
    path = root / relative
    if not path.exists():
        pytest.skip(
            f"{relative} not in the corpus at {root} (set CXR_CORPUS): corpus check skipped"
        )
    return path


def _skips(data: LabelledData) -> dict[str, list[int]]:
    """reason code -> the label-file lines skipped with it."""
    result: dict[str, list[int]] = {}
    for s in data.skipped:
        result.setdefault(s.reason_code, []).append(s.row)
    return result


def _image(path: Path, shade: int, size: int = 16) -> Path:
    """A small synthetic grey image; ``shade`` makes its content (and bytes) distinct."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (size, size), color=shade)
    image.putpixel((0, 0), (shade + 1) % 256)
    image.save(path)
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_public_constants() -> None:
    assert FORMATS == ("chexpert", "nih", "folders", "dicom", "covid", "mhh")
    assert UNCERTAIN_POLICIES == ("ignore", "zeros", "ones")
    assert len(NIH_LABELS) == 14
    assert issubclass(DataError, ValueError)


# --- the real corpus subsets ------------------------------------------------------------------


def test_corpus_nih_labels() -> None:
    """9 rows, 9 images; 5 of them are named <Image Index stem>-<findings>.png in the corpus,
    found by the stem-prefix fallback; 7 patients."""
    labels_csv = _corpus("chester-xray/nih_labels.csv")
    assert guess_format(labels_csv) == "nih"
    data = read_labelled_data(labels_csv)
    assert data.format == "nih"
    assert data.summary() == [("used", 9)]
    assert data.skipped == []
    assert data.labels == list(NIH_LABELS)
    by_key = {s.key: s for s in data.samples}
    assert by_key["00000001_000.png"].path.name == "00000001_000-Cardiomegaly.png"
    assert by_key["00000001_001.png"].path.name == "00000001_001-Cardiomegaly-Emphysema.png"
    assert by_key["00000047_005.png"].path.name == "00000047_005.png"
    assert by_key["00000001_001.png"].labels["Emphysema"] == 1.0
    assert by_key["00000002_000.png"].labels == dict.fromkeys(NIH_LABELS, 0.0)
    assert by_key["00000047_005.png"].view == "AP"
    assert {s.patient for s in data.samples} == {"1", "2", "3", "47", "50", "53", "54"}
    positives = data.positives()
    assert positives["Cardiomegaly"] == (3, 6, 0)
    assert positives["Atelectasis"] == (1, 8, 0)
    assert positives["Mass"] == (0, 9, 0)
    assert data.summary_json()["patients"] == 7


def test_corpus_covid_metadata() -> None:
    """36 rows: 15 used; 8 lateral (L), 6 CT, 7 X-ray rows whose image is not in the subset."""
    metadata = _corpus("covid-chestxray-dataset/metadata_subset.csv")
    assert guess_format(metadata) == "covid"
    data = read_labelled_data(metadata)
    assert data.labels == ["ARDS", "COVID-19", "Klebsiella", "Pneumocystis"]
    assert data.summary() == [
        ("used", 15),
        ("skipped: LATERAL_VIEW", 8),
        ("skipped: NOT_XRAY", 6),
        ("skipped: NO_IMAGE", 7),
    ]
    skips = _skips(data)
    assert skips["LATERAL_VIEW"] == list(range(22, 30))
    assert skips["NOT_XRAY"] == list(range(30, 36))
    assert skips["NO_IMAGE"] == [14, 15, 16, 17, 18, 20, 21]
    assert sorted(s.row for s in data.samples) == [*range(2, 14), 19, 36, 37]
    no_finding = next(s for s in data.samples if s.row == 37)
    assert no_finding.labels == dict.fromkeys(data.labels, 0.0)
    assert data.positives() == {
        "ARDS": (1, 14, 0),
        "COVID-19": (7, 8, 0),
        "Klebsiella": (1, 14, 0),
        "Pneumocystis": (5, 10, 0),
    }
    supine = next(s for s in data.samples if s.row == 19)
    assert supine.view == "AP Supine"


def test_corpus_mhh_subset() -> None:
    """45 rows, 30 PNGs present: 30 used, 15 NO_IMAGE; every image COVID-19 = 1 (cohort)."""
    subset = _corpus("mhh-covid19/data_subset.csv")
    assert guess_format(subset) == "mhh"
    data = read_labelled_data(subset)
    assert data.labels == ["COVID-19"]
    assert data.summary() == [("used", 30), ("skipped: NO_IMAGE", 15)]
    assert _skips(data)["NO_IMAGE"] == [2, 3, 5, 6, 8, 9, 18, 24, 27, 29, 33, 36, 39, 42, 46]
    assert data.positives() == {"COVID-19": (30, 0, 0)}
    assert all(s.path.parent.name == "png" for s in data.samples)
    assert len({s.patient for s in data.samples}) == 23
    assert any("cohort label" in note for note in data.notes)
    with pytest.raises(DataError, match="Pneumonia"):
        read_labelled_data(subset, labels=["Pneumonia"])


# --- CheXpert ---------------------------------------------------------------------------------

CHEXPERT_HEADER = [
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    "No Finding",
    "Cardiomegaly",
    "Edema",
]


def _chexpert(tmp_path: Path) -> Path:
    """A CheXpert-style CSV inside CheXpert-v1.0-small/ with paths that start with that
    folder, as the real one does; images are synthetic."""
    base = tmp_path / "CheXpert-v1.0-small"
    prefix = "CheXpert-v1.0-small/train"

    def frontal(patient: int, shade: int) -> str:
        _image(base / "train" / f"patient{patient:05d}/study1/view1_frontal.jpg", shade)
        return f"{prefix}/patient{patient:05d}/study1/view1_frontal.jpg"

    first, second = frontal(1, 10), frontal(2, 60)
    copy = f"{prefix}/patient00003/study1/view1_frontal.jpg"
    (base / "train/patient00003/study1").mkdir(parents=True)
    (base / "train/patient00003/study1/view1_frontal.jpg").write_bytes(
        (base / "train/patient00002/study1/view1_frontal.jpg").read_bytes()
    )
    broken = f"{prefix}/patient00004/study1/view1_frontal.jpg"
    (base / "train/patient00004/study1").mkdir(parents=True)
    (base / "train/patient00004/study1/view1_frontal.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = [
        [first, "Male", 60, "Frontal", "PA", "", "1", "-1"],  # line 2
        [f"{prefix}/patient00001/study1/view2_lateral.jpg", "Male", 60, "Lateral", "", "", 1, 0],
        [second, "Female", 70, "Frontal", "AP", "", "0.0", "1.0"],  # line 4
        [copy, "Female", 71, "Frontal", "AP", "", "0", "1"],  # line 5: same bytes as line 4
        [broken, "Male", 50, "Frontal", "PA", "", "1", "0"],  # line 6: unreadable
        [frontal(5, 110), "Male", 40, "Frontal", "PA", "", "", ""],  # line 7: nothing known
        [frontal(6, 160), "Male", 40, "Frontal", "PA", "", "", "-1.0"],  # line 8: only uncertain
        [f"{prefix}/patient00007/study1/view1_frontal.jpg", "F", 30, "Frontal", "PA", "", 0, 0],
        [first, "Male", 60, "Frontal", "PA", "", "1", "0"],  # line 10: the key of line 2 again
    ]
    return _write_csv(base / "train.csv", CHEXPERT_HEADER, rows)


def test_chexpert_cleaning_and_u_ignore(tmp_path: Path) -> None:
    labels_csv = _chexpert(tmp_path)
    assert guess_format(labels_csv) == "chexpert"
    data = read_labelled_data(labels_csv)
    assert data.labels == ["No Finding", "Cardiomegaly", "Edema"]
    assert [s.row for s in data.samples] == [2, 4]
    assert _skips(data) == {
        "LATERAL_VIEW": [3],
        "DUPLICATE": [5, 10],
        "UNREADABLE": [6],
        "NO_KNOWN_LABELS": [7, 8],
        "NO_IMAGE": [9],
    }
    first, second = data.samples
    assert first.patient == "patient00001" and second.patient == "patient00002"
    assert first.view == "PA" and second.view == "AP"
    assert first.path.is_file() and first.path.is_absolute()
    assert first.labels["Cardiomegaly"] == 1.0
    assert math.isnan(first.labels["Edema"]) and math.isnan(first.labels["No Finding"])
    assert second.labels["Cardiomegaly"] == 0.0 and second.labels["Edema"] == 1.0
    reasons = {s.row: s.reason for s in data.skipped}
    assert "line 4" in reasons[5] and "patient00002" in reasons[5]
    assert "line 2" in reasons[10]
    assert reasons[6].startswith("UnidentifiedImageError")
    assert data.positives() == {
        "No Finding": (0, 0, 2),
        "Cardiomegaly": (1, 1, 0),
        "Edema": (1, 0, 1),
    }


@pytest.mark.parametrize(("policy", "expected"), [("zeros", 0.0), ("ones", 1.0)])
def test_chexpert_uncertainty_policies(tmp_path: Path, policy: str, expected: float) -> None:
    """U-Zeros and U-Ones (Irvin et al. 2019) make -1 known, so line 8 is used too."""
    data = read_labelled_data(_chexpert(tmp_path), uncertain=policy)
    assert [s.row for s in data.samples] == [2, 4, 8]
    assert data.samples[0].labels["Edema"] == expected
    assert data.samples[2].labels["Edema"] == expected
    assert _skips(data)["NO_KNOWN_LABELS"] == [7]


def test_chexpert_label_choice_and_errors(tmp_path: Path) -> None:
    labels_csv = _chexpert(tmp_path)
    data = read_labelled_data(labels_csv, labels=["edema"], uncertain="ones")
    assert data.labels == ["edema"]
    assert data.samples[0].labels == {"edema": 1.0}
    with pytest.raises(DataError, match=r"Fracture.*available: No Finding, Cardiomegaly, Edema"):
        read_labelled_data(labels_csv, labels=["Fracture"])
    with pytest.raises(ValueError, match="uncertainty policy"):
        read_labelled_data(labels_csv, uncertain="maybe")
    with pytest.raises(ValueError, match="unknown format"):
        read_labelled_data(labels_csv, fmt="mimic")


def test_chexpert_bad_value_names_file_and_line(tmp_path: Path) -> None:
    _image(tmp_path / "patient00001/study1/view1_frontal.jpg", 10)
    rows = [
        ["patient00001/study1/view1_frontal.jpg", "M", 1, "Frontal", "PA", "", 1, 0],
        ["patient00002/study1/view1_frontal.jpg", "M", 1, "Frontal", "PA", "", 2, 0],
    ]
    labels_csv = _write_csv(tmp_path / "valid.csv", CHEXPERT_HEADER, rows)
    with pytest.raises(DataError) as caught:
        read_labelled_data(labels_csv)
    assert str(caught.value).startswith(f"{labels_csv}, line 3: ")
    assert "'Cardiomegaly'" in str(caught.value) and "'2'" in str(caught.value)


def test_missing_columns_and_empty_files(tmp_path: Path) -> None:
    no_path = _write_csv(tmp_path / "no_path.csv", ["Image", "Edema"], [["a.png", 1]])
    with pytest.raises(DataError, match=r"no_path.csv, line 1: missing column\(s\) Path"):
        read_labelled_data(no_path, fmt="chexpert")
    no_findings = _write_csv(tmp_path / "nih.csv", ["Image Index", "Patient ID"], [["a.png", 1]])
    with pytest.raises(DataError, match=r"missing column.*Finding Labels"):
        read_labelled_data(no_findings, fmt="nih")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv, line 1: empty file"):
        read_labelled_data(empty, fmt="chexpert")
    with pytest.raises(DataError, match="cannot tell the format"):
        guess_format(_write_csv(tmp_path / "other.csv", ["a", "b"], [[1, 2]]))


# --- NIH, covid and MHH layouts -----------------------------------------------------------


def test_nih_nested_folders_and_label_spelling(tmp_path: Path) -> None:
    """NIH ships images_001/images/<Image Index>; "Pleural Thickening" = Pleural_Thickening."""
    _image(tmp_path / "images_001/images/00000001_000.png", 10)
    _image(tmp_path / "images_002/images/00000002_000.png", 50)
    _image(tmp_path / "images_002/images/00000003_000.png", 90)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position"]
    rows = [
        ["00000001_000.png", "Pleural_Thickening|Mass", 0, 1, "PA"],
        ["00000002_000.png", "No Finding", 0, 2, "AP"],
        ["00000003_000.png", "Mass", 0, 3, "LL"],
        ["00000004_000.png", "Mass", 0, 4, "PA"],
    ]
    labels_csv = _write_csv(tmp_path / "Data_Entry_2017.csv", header, rows)
    data = read_labelled_data(labels_csv, labels=["Pleural Thickening", "Mass"])
    assert data.labels == ["Pleural Thickening", "Mass"]
    assert [s.labels for s in data.samples] == [
        {"Pleural Thickening": 1.0, "Mass": 1.0},
        {"Pleural Thickening": 0.0, "Mass": 0.0},
    ]
    assert _skips(data) == {"LATERAL_VIEW": [4], "NO_IMAGE": [5]}
    bad = _write_csv(
        tmp_path / "bad.csv", header, [["00000001_000.png", "Mass|Unicorn", 0, 1, "PA"]]
    )
    with pytest.raises(DataError, match=r"bad.csv, line 2: unknown finding"):
        read_labelled_data(bad)


def test_covid_and_mhh_constructed(tmp_path: Path) -> None:
    _image(tmp_path / "images/a.png", 10)
    _image(tmp_path / "images/b.png", 50)
    header = ["patientid", "finding", "view", "modality", "folder", "filename"]
    rows = [
        ["1", "Pneumonia/Viral/COVID-19", "PA", "X-ray", "images", "a.png"],
        ["2", "No Finding", "AP Erect", "X-ray", "images", "b.png"],
        ["3", "Pneumonia/Bacterial", "Axial", "CT", "images", "c.png"],
    ]
    metadata = _write_csv(tmp_path / "metadata.csv", header, rows)
    assert guess_format(metadata) == "covid"
    data = read_labelled_data(metadata)
    assert data.labels == ["Bacterial", "COVID-19", "Pneumonia", "Viral"]
    assert data.samples[0].labels == {
        "Bacterial": 0.0,
        "COVID-19": 1.0,
        "Pneumonia": 1.0,
        "Viral": 1.0,
    }
    assert data.samples[1].labels == dict.fromkeys(data.labels, 0.0)
    assert _skips(data) == {"NOT_XRAY": [4]}

    mhh = tmp_path / "mhh"
    _image(mhh / "x1.png", 10)  # directly under the root, not in png/
    subset = _write_csv(
        mhh / "data_subset.csv",
        ["patient_id", "image_id", "modality", "projection"],
        [["p1", "x1", "CR", "ap"], ["p2", "x2", "CT", "pa"]],
    )
    data = read_labelled_data(subset)
    assert data.format == "mhh"
    assert [(s.key, s.patient, s.view) for s in data.samples] == [("x1", "p1", "ap")]
    assert _skips(data) == {"NOT_XRAY": [3]}


# --- class folders ----------------------------------------------------------------------------


def test_folders_dataset(tmp_path: Path) -> None:
    """Kermany-style NORMAL/ and PNEUMONIA/; normal means all-negative; person prefixes."""
    root = tmp_path / "chest_xray"
    _image(root / "NORMAL/IM-0001-0001.jpeg", 10)
    _image(root / "NORMAL/sub/IM-0002-0001.jpeg", 30)
    _image(root / "PNEUMONIA/person1_bacteria_1.jpeg", 60)
    _image(root / "PNEUMONIA/person1_bacteria_2.jpeg", 90)
    _image(root / "PNEUMONIA/person2_virus_3.jpeg", 120)
    _image(root / "COVID/covid-1.png", 150)
    (root / "PNEUMONIA/notes.txt").write_text("not an image")
    (root / "COVID/copy.png").write_bytes((root / "COVID/covid-1.png").read_bytes())
    assert guess_format(root) == "folders"
    data = read_labelled_data(root)
    assert data.format == "folders" and data.source == root
    assert data.labels == ["COVID", "PNEUMONIA"]
    assert len(data.samples) == 6
    by_key = {s.key: s for s in data.samples}
    assert by_key["NORMAL/sub/IM-0002-0001.jpeg"].labels == {"COVID": 0.0, "PNEUMONIA": 0.0}
    assert by_key["PNEUMONIA/person1_bacteria_2.jpeg"].labels == {"COVID": 0.0, "PNEUMONIA": 1.0}
    assert by_key["PNEUMONIA/person1_bacteria_2.jpeg"].patient == "person1"
    assert by_key["NORMAL/IM-0001-0001.jpeg"].patient == "IM-0001-0001"
    assert all(s.row == 0 for s in data.samples)
    assert _skips(data) == {"DUPLICATE": [0], "NOT_AN_IMAGE": [0]}
    assert data.summary() == [
        ("used", 6),
        ("skipped: DUPLICATE", 1),
        ("skipped: NOT_AN_IMAGE", 1),
        ("patient unknown: split by image", 3),
    ]
    only = read_labelled_data(root, labels=["pneumonia"])
    assert only.labels == ["pneumonia"]
    assert only.samples[0].labels == {"pneumonia": 0.0}
    with pytest.raises(DataError, match="available: COVID, PNEUMONIA"):
        read_labelled_data(root, labels=["Effusion"])


# --- DICOM folder with a label CSV -----------------------------------------------------------


def _dicom(
    path: Path,
    *,
    accession: str = "ACC1",
    patient: str = "SYN-0001",
    pixels: bool = True,
    **changes: str,
) -> str:
    """A synthetic 64x64 DX chest saved to ``path``; returns its SOP Instance UID."""
    ds = make_dx_chest(64, 64)
    ds.AccessionNumber = accession
    ds.PatientID = patient
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if not pixels:
        del ds.PixelData
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def test_dicom_folder_keyed_by_sop_instance_uid(tmp_path: Path) -> None:
    folder = tmp_path / "dicoms"
    frontal = _dicom(folder / "a" / "frontal.dcm", patient="SECRET-PID-1")
    lateral = _dicom(folder / "a" / "lateral.dcm", ViewPosition="LL")
    ct = _dicom(folder / "b" / "ct", Modality="CT")
    empty = _dicom(folder / "b" / "nopixels.dcm", pixels=False)
    unlabelled = _dicom(folder / "c" / "unlabelled.dcm")
    (folder / "c" / "broken.dcm").write_bytes(b"not dicom at all")
    (folder / "c" / "photo.png").write_bytes(b"\x89PNG")
    (folder / "README.txt").write_text("ignored")
    absent = generate_uid()
    labels_csv = _write_csv(
        tmp_path / "labels.csv",
        ["SOPInstanceUID", "Effusion", "Pneumothorax"],
        [[frontal, 1, ""], [lateral, 0, 0], [ct, 1, 1], [empty, 1, 1], [absent, 0, 1]],
    )
    assert guess_format(labels_csv) == "dicom"
    data = read_labelled_data(labels_csv, images_root=folder)
    assert data.format == "dicom" and data.labels == ["Effusion", "Pneumothorax"]
    assert len(data.samples) == 1
    sample = data.samples[0]
    assert sample.key == frontal and sample.row == 2 and sample.view == "PA"
    assert sample.labels["Effusion"] == 1.0 and math.isnan(sample.labels["Pneumothorax"])
    assert sample.patient.startswith("patient-") and "SECRET" not in sample.patient
    codes = {s.key: s.reason_code for s in data.skipped}
    assert codes == {
        lateral: "LATERAL_VIEW",
        ct: "MODALITY",
        empty: "NO_PIXEL_DATA",
        unlabelled: "NO_LABELS",
        "broken.dcm": "UNREADABLE",
        "photo.png": "NOT_AN_IMAGE",
        absent: "NO_IMAGE",
    }
    assert next(s for s in data.skipped if s.key == absent).row == 6
    assert "SECRET" not in json.dumps(data.summary_json())


def test_dicom_folder_keyed_by_accession(tmp_path: Path) -> None:
    """``data`` the folder holding one CSV; several images of one accession share its labels."""
    folder = tmp_path / "site"
    first = _dicom(folder / "1.dcm", accession="A100", patient="P1")
    second = _dicom(folder / "2.dcm", accession="A100", patient="P1")
    third = _dicom(folder / "3.dcm", accession="A200", patient="P2")
    _write_csv(
        folder / "labels.csv",
        ["Accession Number", "Cardiomegaly"],
        [["A100", "1"], ["A200", "-1"], ["A200", "0"], ["A300", "0"]],
    )
    assert guess_format(folder) == "dicom"
    data = read_labelled_data(folder, uncertain="zeros")
    assert [(s.key, s.row, s.labels["Cardiomegaly"]) for s in data.samples] == [
        (first, 2, 1.0),
        (second, 2, 1.0),
        (third, 3, 0.0),
    ]
    assert data.samples[0].patient == data.samples[1].patient != data.samples[2].patient
    assert _skips(data) == {"DUPLICATE": [4], "NO_IMAGE": [5]}
    assert data.summary_json()["skipped_counts"] == {"DUPLICATE": 1, "NO_IMAGE": 1}


# --- splits -----------------------------------------------------------------------------------


def _samples(n_patients: int = 40) -> list[Sample]:
    """Synthetic samples: patient i has 1 + i % 3 images."""
    return [
        Sample(
            path=Path(f"/synthetic/p{i}_{j}.png"),
            patient=f"p{i:03d}",
            labels={"Effusion": float((i + j) % 2)},
            key=f"p{i}_{j}.png",
            view="PA",
            row=0,
            source="synthetic",
        )
        for i in range(n_patients)
        for j in range(1 + i % 3)
    ]


def _patients(samples: Sequence[Sample]) -> set[str]:
    return {s.patient for s in samples}


def test_split_by_patient_keeps_patients_whole_and_is_seeded() -> None:
    samples = _samples()
    splits = split_by_patient(samples, validation_fraction=0.25, seed=1, test_fraction=0.25)
    assert list(splits) == ["train", "validation", "test"]
    assert sum(len(v) for v in splits.values()) == len(samples)
    train, validation, test = (_patients(splits[n]) for n in ("train", "validation", "test"))
    assert not train & validation and not train & test and not validation & test
    assert 0.25 * len(samples) <= len(splits["validation"]) < 0.25 * len(samples) + 3
    assert split_by_patient(samples, 0.25, 1, 0.25) == splits
    assert split_by_patient(samples, 0.25, 2, 0.25) != splits
    two = split_by_patient(samples, 0.2, seed=0)
    assert list(two) == ["train", "validation"]
    with pytest.raises(ValueError):
        split_by_patient(samples, 0.6, test_fraction=0.5)


def test_write_and_read_split_round_trip(tmp_path: Path) -> None:
    samples = _samples(12)
    splits = split_by_patient(samples, 0.3, seed=3, test_fraction=0.2)
    split_csv = tmp_path / "split.csv"
    write_split(split_csv, splits)
    with split_csv.open(newline="") as stream:
        assert next(csv.reader(stream)) == ["split", "key", "patient", "path"]
    assert read_split(split_csv, samples) == splits
    with pytest.raises(DataError, match=r"split.csv, line \d+: key 'p0_0.png' is not among"):
        read_split(split_csv, [s for s in samples if s.key != "p0_0.png"])
