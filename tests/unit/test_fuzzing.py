"""The fuzz case generators (``tests/fuzzing.py``, ``tests/fuzz_network.py``) themselves: the
same seed gives the same cases, each mutation really puts its hostile value on the wire, the
deflate bomb inflates to what it claims, and the hand-made PDUs are what pynetdicom's own
decoder reads. Synthetic bases only (no corpus needed)."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ

from tests import fuzz_network as fn
from tests import fuzzing as fz
from tests.unit._synthetic import make_dx_chest


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "dx.dcm"
    make_dx_chest().save_as(path, enforce_file_format=True)
    return path


def _read(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True)


@pytest.mark.parametrize("name", sorted(fz.STRUCTURE_MUTATIONS))
def test_each_structure_mutation_is_deterministic_and_keeps_the_file_meta_valid(
    base: Path, name: str
) -> None:
    made = []
    for _ in range(2):
        dataset = fz.renew(fz.read_base(base), 1, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            label = fz.STRUCTURE_MUTATIONS[name](dataset, np.random.default_rng([5, len(name)]))
        made.append((label, fz.to_part10(dataset)))
    assert made[0] == made[1]
    meta, _ = fz.file_meta(made[0][1])
    assert meta.MediaStorageSOPInstanceUID == fz.seeded_uid(1, name, "sop")


def test_raw_values_reach_the_file_as_they_are(base: Path) -> None:
    dataset = fz.renew(fz.read_base(base), 2)
    fz.put_raw(dataset, 0x00280010, "US", b"abc")  # Rows: text, odd length
    fz.put_raw(dataset, 0x00091010, "ZZ", b"\x01\x02")  # an unknown VR
    fz.put_raw(dataset, 0x00281051, "DS", b"0 ")  # Window Width 0
    data = fz.to_part10(dataset)
    assert b"\x28\x00\x10\x00US\x03\x00abc" in data
    assert b"\x09\x00\x10\x10ZZ\x02\x00\x01\x02" in data
    assert b"\x28\x00\x51\x10DS\x02\x000 " in data


def test_a_two_megabyte_patient_name_is_written(base: Path) -> None:
    for seed in range(40):
        dataset = fz.renew(fz.read_base(base), 3)
        label = fz.mutate_huge_string(dataset, np.random.default_rng(seed))
        if label.startswith("PatientName 2097152"):
            raw = _read(fz.to_part10(dataset))[0x00100010]
            assert len(raw.value) == 2 * 1024 * 1024
            return
    pytest.fail("no 2 MB Patient Name in 40 seeds")


def test_byte_cases_are_deterministic_and_cover_every_mutation(base: Path) -> None:
    first = [fz.byte_case(base, np.random.default_rng([9, i]), 9, i) for i in range(60)]
    again = [fz.byte_case(base, np.random.default_rng([9, i]), 9, i) for i in range(60)]
    assert first == again
    assert {name for name, _ in first} == set(fz.BYTE_MUTATIONS) | set(fz.MORE_BYTE_MUTATIONS)


def test_the_deflate_bomb_is_small_and_inflates_past_a_gibibyte(base: Path) -> None:
    dataset = fz.renew(fz.read_base(base), 4)
    data = fz.deflate_bomb(dataset)
    start, syntax = fz.split_part10(data)
    assert syntax == DeflatedExplicitVRLittleEndian
    assert len(data) < 2 * 1024 * 1024
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head = inflater.decompress(data[start : start + 65536], 65536)
    at = head.index(b"\xe0\x7f\x10\x00OB\x00\x00")
    (declared,) = struct.unpack("<I", head[at + 8 : at + 12])
    assert declared > 1 << 30
    total = len(head)
    tail = inflater.unconsumed_tail
    for position in range(start + 65536, len(data), 1 << 16):
        total += len(inflater.decompress(tail + data[position : position + (1 << 16)]))
        tail = b""
    total += len(inflater.flush())
    assert inflater.eof
    assert total == at + 12 + declared


@pytest.mark.parametrize("variant", fz.DEFLATE_MUTATIONS)
def test_deflate_cases(base: Path, variant: str) -> None:
    kind, data = fz.deflate_case(base, np.random.default_rng(1), 5, variant=variant)
    assert kind == variant
    assert fz.split_part10(data)[1] == DeflatedExplicitVRLittleEndian
    if variant == "normal":
        assert _read(data).Rows == make_dx_chest().Rows


def test_patient_conflict_pairs_share_uids_and_differ_in_the_patient(base: Path) -> None:
    seen = set()
    for seed in range(12):
        variant, first, second = fz.patient_conflict_pair(base, np.random.default_rng(seed), seed)
        a, b = _read(first), _read(second)
        assert a.StudyInstanceUID == b.StudyInstanceUID
        assert (a.SOPInstanceUID == b.SOPInstanceUID) == variant.startswith("same SOP")
        assert (a.PatientID, a.PatientName, a.PatientBirthDate) != (
            b.PatientID,
            b.PatientName,
            b.PatientBirthDate,
        )
        seen.add(variant.split(",")[0])
    assert seen == {"same SOP Instance UID", "same Study Instance UID"}


def test_the_hand_made_association_request_is_what_pynetdicom_decodes() -> None:
    data = fz.associate_rq(calling="FUZZ", max_pdu=12345)
    request = A_ASSOCIATE_RQ()
    request.decode(data)
    assert request.called_ae_title == fz.NODE_AE_TITLE
    assert request.calling_ae_title == "FUZZ"
    contexts = {c.context_id: c.abstract_syntax for c in request.presentation_context}
    assert contexts == {1: ComputedRadiographyImageStorage, 3: fz.VERIFICATION}
    primitive = request.to_primitive()
    assert primitive.maximum_length_received == 12345


def test_the_hand_made_c_store_command_reads_back() -> None:
    command = fz.c_store_command(ComputedRadiographyImageStorage, "1.2.3.4", message_id=9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dataset.Dataset()
        read = pydicom.filereader.read_dataset(io.BytesIO(command), True, True)
        dataset.update(read)
    assert dataset.CommandField == 0x0001
    assert dataset.MessageID == 9
    assert dataset.AffectedSOPInstanceUID == "1.2.3.4"
    assert dataset.CommandGroupLength == len(command) - 12


def test_the_network_plan_is_deterministic_with_every_family_and_whole_volleys() -> None:
    cases = fn.plan(300, 12)
    assert cases == fn.plan(300, 12)
    assert cases != fn.plan(300, 13)
    assert len(cases) == 300
    families = Counter(c.family for c in cases)
    assert set(families) == set(fn.NETWORK_WEIGHTS) | {"pdu:slow"}
    volley = [c.index for c in cases if c.volley == 0]
    assert len(volley) == fn.VOLLEY_SIZE
    assert volley == list(range(volley[0], volley[0] + fn.VOLLEY_SIZE))
    assert len({c.volley for c in fn.plan(10_000, 1) if c.volley is not None}) == 10


def test_a_hostile_uid_in_the_data_set_leaves_the_file_meta_alone(base: Path) -> None:
    dataset = fz.renew(fz.read_base(base), 6)
    fz.put_raw(dataset, 0x00080018, "UI", b"1.2.3\n4")
    fz.put_raw(dataset, 0x00080016, "UI", b"")
    fz.put_raw(dataset, 0x00080005, "CS", b"FOO_BAR ")  # an unknown charset changes nothing
    data = fz.to_part10(dataset)
    meta, start = fz.file_meta(data)
    assert meta.MediaStorageSOPInstanceUID == fz.seeded_uid(6, "sop")
    assert meta.MediaStorageSOPClassUID == make_dx_chest().SOPClassUID
    assert b"\x08\x00\x18\x00UI\x07\x001.2.3\n4" in data[start:]
    assert b"\x08\x00\x16\x00UI\x00\x00" in data[start:]
