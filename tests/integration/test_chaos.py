"""Recovery under chaos (bench/chaos.py, smaller): serve, the analysis worker and the delivery
worker SIGKILLed and restarted, Redis restarted empty, the destination down for 15 s, while 30
studies arrive; every acknowledged study must reach the destination exactly once, within 90 s
of the end of the fault that delayed it, and no process may exit 0 by itself. Also the
harness's own arithmetic, without processes."""

from __future__ import annotations

import importlib
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, require_tool

LIMIT_SECONDS = 90.0
SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


def _bench(name: str) -> ModuleType:
    """A module of the bench (bench/ is a folder of scripts, not a package)."""
    bench = str(REPO / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(name)


def test_the_verdict_counts_duplicates_missing_studies_and_delay_past_the_fault() -> None:
    support = _bench("_chaos_support")
    faults = [
        support.Fault("kill_serve", "serve", 120.0, 150.0),
        support.Fault("destination_down", "destination", 200.0, 300.0),
    ]

    def got(study: str, sop: str, sop_class: str, at: float) -> dict[str, object]:
        return {"study": study, "sop": sop, "sop_class": sop_class, "at": at}

    records = [
        got("A", "a-sr", SR, 110.0),
        got("A", "a-sc", SC, 111.0),
        got("B", "b-sr", SR, 160.0),
        got("B", "b-sc", SC, 161.0),
        got("B", "b-sr", SR, 170.0),  # the same SR again: a duplicate
        got("D", "d-sr", SR, 400.0),  # a second result set for D
        got("D", "d-sc", SC, 401.0),
        got("D", "d-sr2", SR, 402.0),
    ]
    statuses = {
        "A": {
            "state": "delivered",
            "results": [{"sop_instance_uid": "a-sr"}, {"sop_instance_uid": "a-sc"}],
        }
    }
    verdict = support.judge(
        {"A": 100.0, "B": 100.0, "C": 100.0, "D": 100.0}, ["E"], records, faults, statuses, 0.0
    )
    studies = {entry["study"]: entry for entry in verdict["per_study"]}
    assert verdict["studies"]["acknowledged"] == 4
    assert verdict["studies"]["never_acknowledged"] == 1
    assert verdict["studies"]["missing"] == 1 and "missing" in studies["C"]
    assert verdict["studies"]["exactly_once"] == 1 and studies["A"]["exactly_once"]
    assert studies["A"]["delay_past_fault_s"] == 11.0  # no fault ended between ack and delivery
    assert studies["B"]["delay_past_fault_s"] == 11.0  # 161 - end of the serve kill (150)
    assert studies["B"]["ack_to_delivered_s"] == 61.0
    assert studies["B"]["duplicate_receptions"] == 1 and not studies["B"]["exactly_once"]
    assert studies["D"]["delay_past_fault_s"] == 101.0  # 401 - end of the outage (300)
    assert not studies["D"]["exactly_once"]
    assert verdict["delay_past_fault_s"]["over_90_s"] == 1
    assert verdict["studies"]["not_exactly_once_in_flight_at_kill"] == 0


def test_a_duplicate_in_flight_at_a_delivery_kill_is_counted_apart() -> None:
    support = _bench("_chaos_support")
    faults = [support.Fault("kill_delivery", "delivery", 50.3, 55.0)]

    def got(study: str, sop: str, sop_class: str, at: float) -> dict[str, object]:
        return {"study": study, "sop": sop, "sop_class": sop_class, "at": at}

    records = [
        got("A", "a-sr", SR, 50.0),  # stored 0.3 s before the kill: in flight
        got("A", "a-sc", SC, 56.0),
        got("A", "a-sr", SR, 56.1),
        got("B", "b-sr", SR, 40.0),  # 10 s before the kill: resent by a bug
        got("B", "b-sc", SC, 41.0),
        got("B", "b-sr", SR, 57.0),
    ]
    verdict = support.judge({"A": 45.0, "B": 35.0}, [], records, faults, {}, 0.0)
    studies = {entry["study"]: entry for entry in verdict["per_study"]}
    assert verdict["studies"]["not_exactly_once"] == 2
    assert verdict["studies"]["not_exactly_once_in_flight_at_kill"] == 1
    assert studies["A"]["duplicates_in_flight_at_kill"] == 1
    assert studies["B"]["duplicates_in_flight_at_kill"] == 0


def test_the_fault_plan_is_seeded_and_spaced() -> None:
    chaos = _bench("chaos")
    options = chaos.ChaosOptions(studies=200, seed=3)
    plan = chaos.plan_faults(options)
    assert plan == chaos.plan_faults(chaos.ChaosOptions(studies=200, seed=3))
    kills = [p.offset for p in plan if p.kind != "destination_down"]
    assert len(kills) == 2 * len(chaos.KILLS)
    gap = options.restart_pause + chaos.FAULT_SPACING_SECONDS
    assert all(b - a >= gap - 0.01 for a, b in itertools.pairwise(kills))


# pynetdicom 3.0 leaves a socket to the garbage collector when an association attempt finds
# serve gone (connection refused): a ResourceWarning of the harness's sender, not of the node.
@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.timeout(600)
def test_every_acknowledged_study_is_delivered_exactly_once_soon_after_each_fault(
    tmp_path: Path,
) -> None:
    require_tool("/usr/bin/redis-server")
    chaos = _bench("chaos")
    options = chaos.ChaosOptions(
        studies=30,
        rate=1.0,
        seed=7,
        destination_down_seconds=15.0,
        kills_per_kind=1,
        max_wait=120.0,
        settle_seconds=5.0,
        limit_seconds=LIMIT_SECONDS,
        work_dir=tmp_path / "chaos",
    )
    report = chaos.ChaosRun(options).run()
    summary = chaos.describe(report)
    print(summary)
    studies = report["studies"]

    injected = {fault["kind"] for fault in report["faults"]}
    assert injected >= {*chaos.KILLS, "destination_down"}, summary  # the harness did its part
    assert not report["harness_errors"], summary
    assert studies["acknowledged"] == options.studies, summary
    assert studies["missing"] == 0, summary
    # A result in flight when the delivery worker was SIGKILLed may arrive twice (the
    # destination stored it; the response, or our record of it, died with the worker): at most
    # one per kill. Any other duplicate, or a resent study, is a bug.
    in_flight = studies["not_exactly_once_in_flight_at_kill"]
    assert studies["not_exactly_once"] - in_flight == 0, summary
    assert in_flight <= options.kills_per_kind, summary
    assert report["delay_past_fault_s"][f"over_{LIMIT_SECONDS:g}_s"] == 0, summary
    # The harness restarted every process that exited; a restart-on-failure supervisor would
    # have left one that exited 0 down, and its studies with it.
    assert report["exits_with_code_0"] == 0, summary
