"""Fuzzing the front door and ``analyze`` with mutations of real radiographs.

Mutations: truncation, flipped bytes, absurd Rows/Columns, a lying transfer syntax, deeply
nested sequences, huge declared lengths. Each is sent byte for byte over C-STORE (its own
association) and analysed offline. Every C-STORE gets a DIMSE status, the node keeps answering
C-ECHO, every stored study ends in a final state with a reason when it is not analysed, memory
stays bounded, and ``analyze`` answers each file with a result or a reason, never a crash.
"""

from __future__ import annotations

import io
import re
import struct
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import _config

from cxr_node.errors import RejectedInput
from cxr_node.ledger import Ledger
from cxr_node.settings import load_settings
from cxr_node.spool import safe_key
from tests.conftest import wait_until
from tests.integration.node import NodeProcess
from tests.integration.sending import echo, send
from workers.analysis import Analyzer
from workers.offline import read_source

pytestmark = pytest.mark.integration

BASES = ("dwv/gdcm-CR-MONO1-10-chest.dcm", "pylibjpeg-data/RG1_J2KI.dcm")
PER_KIND = 12
FINAL = {"analysed", "delivered", "not_eligible", "failed"}
Mutation = Callable[[bytes, int, np.random.Generator], bytes]


def _split(data: bytes) -> tuple[int, str]:
    """Where the data set starts after preamble and file meta, and the syntax the meta claims
    (the data set may say otherwise)."""
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    meta = pydicom.filereader._read_file_meta_info(stream)
    return stream.tell(), str(meta.TransferSyntaxUID)


def _fresh(base: Path, folder: Path, index: int) -> bytes:
    """The base file as a new instance in a new study (so each mutation is its own case)."""
    dataset = pydicom.dcmread(base)
    dataset.StudyInstanceUID = generate_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def truncate(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(start, len(data)))]


def flip_bytes(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    mutable = bytearray(data)
    for position in rng.integers(start, len(data), size=int(rng.integers(1, 64))):
        mutable[position] ^= int(rng.integers(1, 256))
    return bytes(mutable)


def _rewrite(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    change(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def absurd_size(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    rows, columns = (int(v) for v in rng.choice([0, 1, 3, 65535, 40000, 16384], size=2))

    def change(dataset: Dataset) -> None:
        dataset.Rows, dataset.Columns = rows, columns

    return _rewrite(data, change)


def lying_syntax(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """The file meta names one transfer syntax; the data set stays encoded in another."""
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    actual = meta.TransferSyntaxUID
    lies = [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000) if s != actual]
    meta.TransferSyntaxUID = lies[int(rng.integers(0, len(lies)))]
    buffer = DicomBytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + data[start:]


def deep_nesting(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    """Append (FFFA,FFFA) sequences nested thousands deep, in undefined-length items (written
    by hand: pydicom's own writer cannot go that deep)."""
    depth = int(rng.integers(500, 5000))
    implicit = (
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        .file_meta["TransferSyntaxUID"]
        .value
        == ImplicitVRLittleEndian
    )
    undefined = 0xFFFFFFFF
    if implicit:
        opening = struct.pack("<HHI", 0xFFFA, 0xFFFA, undefined)
    else:
        opening = struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, undefined)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, undefined)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data + (opening + item) * depth + closing * depth


def huge_length(data: bytes, start: int, rng: np.random.Generator) -> bytes:
    mutable = bytearray(data)
    # explicit VR little endian headers with a 4-byte length: tag, VR, 2 reserved, length
    headers = [m.start() for m in re.finditer(rb"(OB|OW|SQ|UN|UT)\x00\x00", data[start:])]
    if not headers:
        return truncate(data, start, rng)
    at = start + headers[int(rng.integers(0, len(headers)))] + 4
    struct.pack_into("<I", mutable, at, int(rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0x10000000])))
    return bytes(mutable)


MUTATIONS: dict[str, Mutation] = {
    "truncate": truncate,
    "flip_bytes": flip_bytes,
    "absurd_size": absurd_size,
    "lying_syntax": lying_syntax,
    "deep_nesting": deep_nesting,
    "huge_length": huge_length,
}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cases(
    base: Path, folder: Path, rng: np.random.Generator, first: int
) -> list[tuple[str, Path, str, str, str]]:
    cases = []
    for kind, mutate in MUTATIONS.items():
        for index in range(PER_KIND):
            fresh = _fresh(base, folder, index)
            header = pydicom.dcmread(io.BytesIO(fresh), stop_before_pixels=True)
            mutated = mutate(fresh, _split(fresh)[0], rng)
            path = folder / f"{kind}-{first + len(cases)}.dcm"
            path.write_bytes(mutated)
            syntax = _split(mutated)[1]
            sop_class, study = str(header.SOPClassUID), str(header.StudyInstanceUID)
            cases.append((kind, path, sop_class, syntax, study))
    return cases


# CPU-heavy (every case analysed in-process too): room for a loaded 2-core machine.
@pytest.mark.timeout(900)
def test_mutated_radiographs_get_an_answer_and_break_nothing(
    corpus: Path, quiet_node: NodeProcess, models_dir: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(20261122)
    cases: list[tuple[str, Path, str, str, str]] = []  # kind, file, sop class, syntax, study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom complains about what we break on purpose
        for base_name in BASES:
            cases += _cases(corpus / base_name, tmp_path, rng, len(cases))

    statuses: Counter[str] = Counter()
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        for number, (kind, path, sop_class, syntax, _study) in enumerate(cases):
            outcome = send(quiet_node.port, path, sop_class, syntax, timeout=30)
            assert (
                outcome.status is not None or outcome.note == "no presentation context accepted"
            ), (kind, path.name, outcome.note)
            statuses[
                f"{kind}: 0x{outcome.status:04X}"
                if outcome.status is not None
                else f"{kind}: {outcome.note}"
            ] += 1
            if number % 10 == 0:
                assert echo(quiet_node.port), f"no C-ECHO answer after {path.name}"
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    assert echo(quiet_node.port)
    print(f"{len(cases)} mutated inputs over C-STORE: {dict(sorted(statuses.items()))}")

    ledger = Ledger(f"sqlite:///{quiet_node.data_dir / 'ledger.sqlite'}")
    try:
        studies = {study for *_, study in cases}
        known = [s for s in studies if ledger.study(safe_key(s)) is not None]

        def settled() -> bool:
            return all(ledger.study(safe_key(s)).state.value in FINAL for s in known)  # type: ignore[union-attr]

        assert wait_until(settled, timeout=300), quiet_node.log()[-3000:]
        for study_uid in known:
            study = ledger.study(safe_key(study_uid))
            assert study is not None
            if study.state.value in {"not_eligible", "failed"}:
                assert study.reason_code and study.reason
        states = Counter(ledger.study(safe_key(s)).state.value for s in known)  # type: ignore[union-attr]
        print(f"studies stored: {len(known)}; final states: {dict(states)}")
    finally:
        ledger.close()
    assert _rss_mb(quiet_node.pid) < 300, "serve grew past 300 MB"
    workers = re.findall(r"analysis worker started \(pid (\d+)\)", quiet_node.log())
    assert workers and _rss_mb(int(workers[-1])) < 2000

    analyzer = Analyzer(load_settings(data_dir=models_dir.parent, models_dir=models_dir))
    answers: Counter[str] = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, path, *_ in cases:
            started = time.monotonic()
            try:
                analyzer.analyse(read_source(path))
                answers["analysed"] += 1
            except RejectedInput as exc:
                answers[exc.reason_code] += 1
            assert time.monotonic() - started < 60, (kind, path.name)
    print(f"analyze on the same {len(cases)} inputs: {dict(answers)}")
