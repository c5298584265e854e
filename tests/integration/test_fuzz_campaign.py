"""The fuzz campaign's short run: ``bench/fuzz.py`` with a few hundred network cases and a few
dozen analysis cases on a fixed seed (the long run, 10,000 and 1,000, is the bench's default),
against a real ``cxr-node serve`` and the real ``cxr-node analyze``.

Done means what issue 12 says: no unhandled exception (serve's threads, analyze's files), no
hang, no lockout (every C-ECHO answered within 5 s, during slow connections too), no SR or SC
that dciodvfy finds an error in, no expectation broken (an image of another patient under
known UIDs acknowledged, a PDU read far past its limit ...), serve under 300 MB, no partial
file left, nothing forged in the log. Each failure message carries the bench's examples; the
cases replay alone with ``bench/fuzz.py --seed 12 --only N`` (``--dump DIR`` writes them).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.integration

SEED = 12
NETWORK_CASES = 250
ANALYSIS_CASES = 40


@pytest.fixture(scope="module")
def report(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_tool("/usr/bin/dciodvfy")
    require_tool("/usr/bin/redis-server")
    work = tmp_path_factory.mktemp("fuzz")
    out = work / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "fuzz.py"),
            *("--seed", str(SEED), "--corpus", str(corpus)),
            *("--network-cases", str(NETWORK_CASES), "--analysis-cases", str(ANALYSIS_CASES)),
            *("--batch", "20", "--max-minutes", "10", "--dimse-timeout", "30"),
            *("--out", str(out), "--work-dir", str(work / "run"), "--keep-work"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO,
    )
    assert out.exists(), f"no report (exit {done.returncode}): {done.stderr[-3000:]}"
    print(done.stdout[-4000:])
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _examples(report: dict[str, Any], *keys: str) -> str:
    examples = report["network"]["examples"]
    chosen = {k: v for k, v in examples.items() if not keys or k in keys}
    return json.dumps(chosen, indent=1)[:3000]


@pytest.mark.timeout(1800)
def test_every_case_is_played_and_answered(report: dict[str, Any]) -> None:
    network, analysis = report["network"], report["analysis"]
    assert network["played"] == NETWORK_CASES
    assert network["fuzzer_errors"] == 0, _examples(report)
    assert analysis["answered"] == ANALYSIS_CASES, analysis["unanswered"]
    assert not analysis["batch_failures"], analysis["batch_failures"]


@pytest.mark.timeout(1800)
def test_no_unhandled_exception_anywhere(report: dict[str, Any]) -> None:
    log = report["serve_log"]
    assert report["serve"]["alive_after_cases"]
    assert log["unhandled_exceptions"] == 0, log["tracebacks_by_source"]
    assert report["analysis"]["internal_errors"] == 0, report["analysis"]["internal_error_cases"]


@pytest.mark.timeout(1800)
def test_no_hang_no_lockout_no_broken_expectation(report: dict[str, Any]) -> None:
    network = report["network"]
    assert network["hangs"] == 0, _examples(report, "hang")
    assert network["echo"]["failed"] == 0, network["echo"]["lockouts"]
    assert network["violations"] == {}, _examples(report)


@pytest.mark.timeout(1800)
def test_every_result_validates(report: dict[str, Any]) -> None:
    outputs = report["outputs"]
    assert outputs["validated"] > 0
    assert outputs["invalid"] == 0, outputs["invalid_examples"]


@pytest.mark.timeout(1800)
def test_serve_stays_small_and_clean(report: dict[str, Any]) -> None:
    serve, log = report["serve"], report["serve_log"]
    assert serve["rss_mb"]["peak"] < 300, serve["rss_mb"]["cases_in_flight_at_peak"]
    assert serve["spool_tmp_leftovers"] == 0, serve["spool_tmp_examples"]
    assert log["forged_lines"] == 0
    assert log["lines_with_control_characters"] == 0, log["control_character_examples"]
    assert log["longest_line"] < 2000
