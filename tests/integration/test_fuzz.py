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
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import _config

from cxr_node.errors import RejectedInput
from cxr_node.ledger import Ledger
from cxr_node.settings import load_settings
from cxr_node.spool import safe_key
from tests.conftest import wait_until
from tests.fuzzing import BYTE_MUTATIONS, fresh, split_part10
from tests.integration.node import NodeProcess
from tests.integration.sending import echo, send
from workers.analysis import Analyzer
from workers.offline import read_source

pytestmark = pytest.mark.integration

BASES = ("dwv/gdcm-CR-MONO1-10-chest.dcm", "pylibjpeg-data/RG1_J2KI.dcm")
PER_KIND = 12
FINAL = {"analysed", "delivered", "not_eligible", "failed"}
MUTATIONS = BYTE_MUTATIONS
"""The byte-level mutations of ``tests/fuzzing.py`` (shared with ``bench/fuzz.py``)."""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cases(
    base: Path, folder: Path, rng: np.random.Generator, first: int
) -> list[tuple[str, Path, str, str, str]]:
    cases: list[tuple[str, Path, str, str, str]] = []
    for kind, mutate in MUTATIONS.items():
        for index in range(PER_KIND):
            original = fresh(base, "test_fuzz", base.name, kind, index)
            header = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True)
            mutated = mutate(original, split_part10(original)[0], rng)
            path = folder / f"{kind}-{first + len(cases)}.dcm"
            path.write_bytes(mutated)
            syntax = split_part10(mutated)[1]
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
