"""Chaos harness: how a cxr-node in Redis mode recovers from crashes, a broker restart and a
destination outage, measured as exactly-once delivery and delay past the end of each fault.

It starts its own ``redis-server`` (no persistence), ``cxr-node serve --broker ...``, separate
``cxr-node worker --role analysis`` and ``--role delivery`` (one configuration file, one data
dir), and a recording Storage SCP as the destination (``bench/_chaos_support.py scp``: every
received SOP Instance UID with its study and receive time, fsynced). It sends ``--studies``
one-image studies (synthetic DX chest, fresh UIDs) at ``--rate`` per second, one association
each, retrying a study until it is acknowledged. Meanwhile, on ``--seed``, it SIGKILLs serve,
the analysis worker and the delivery worker (each restarted after ``--restart-pause`` seconds,
as a supervisor would), kills and restarts Redis (queued messages are lost), and takes the
destination down for ``--destination-down-seconds``. A process that exits by itself is
recorded with its exit code and restarted (a restart-on-failure supervisor would leave one that
exited 0 down: the report says which).

Then it waits (at most ``--max-wait`` seconds) until every acknowledged study's SR and SC are at
the destination, and reports: exactly-once (each result instance the ledger lists received
once, nothing else for the study), missing studies, ack-to-delivered time, and the delay past
the fault that delayed each study: ``delivered_at - max(acked_at, end of the last fault that
ended before delivered_at)``; a fault ends when the restarted process is ready again.

    .venv/bin/python bench/chaos.py [--studies 200] [--rate 1.0] [--seed 1] \
        [--destination-down-seconds 60] [--max-wait 900] [--json-out chaos.json]

Logs and the node's data stay in the work folder it prints (``--work-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydicom import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chaos_support import (
    Fault,
    ProcessExit,
    Supervised,
    free_port,
    judge,
    ledger_statuses,
    listening,
    log_findings,
    read_records,
    synthetic_study,
    wait_until,
)

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "_chaos_support.py"
KILLS = ("kill_serve", "kill_analysis", "kill_delivery", "restart_redis")
TARGETS = {
    "kill_serve": "serve",
    "kill_analysis": "analysis",
    "kill_delivery": "delivery",
    "restart_redis": "redis",
}
FAULT_SPACING_SECONDS = 8.0
"""At least this long between two kills (on top of the restart pause)."""


@dataclass
class ChaosOptions:
    """What one chaos run does; the defaults are the bench's."""

    studies: int = 200
    rate: float = 1.0
    seed: int = 1
    destination_down_seconds: float = 60.0
    restart_pause: float = 2.0
    kills_per_kind: int | None = None
    """Kills of each process and Redis restarts; default one per 100 studies (at least 1)."""
    faults: bool = True
    max_wait: float = 900.0
    settle_seconds: float = 10.0
    sender_threads: int = 6
    sender_grace: float = 120.0
    """A study not acknowledged this long after its turn to be sent is given up."""
    limit_seconds: float = 90.0
    work_dir: Path | None = None
    json_out: Path | None = None
    node_settings: dict[str, Any] = field(default_factory=dict)
    """Extra keys for the node's configuration file (e.g. delivery_retry_max_seconds)."""
    quiet: bool = False

    def kills(self) -> int:
        """How many of each kill, and Redis restarts."""
        if not self.faults:
            return 0
        if self.kills_per_kind is not None:
            return self.kills_per_kind
        return max(1, round(self.studies / 100))


@dataclass
class PlannedFault:
    """A fault at ``offset`` seconds after sending starts."""

    offset: float
    kind: str
    duration: float = 0.0


def plan_faults(options: ChaosOptions) -> list[PlannedFault]:
    """The seeded schedule: kills spread over the middle 80 % of sending (one slot each, at
    least ``restart_pause + FAULT_SPACING_SECONDS`` apart; a kill starts only once the one
    before is back), and one destination outage, overlapping whatever comes then, that starts
    2-8 s before the first Redis restart (or 15-45 % of the way through sending without one)."""
    if not options.faults:
        return []
    rng = random.Random(options.seed)
    sending = options.studies / options.rate
    kinds = [kind for kind in KILLS for _ in range(options.kills())]
    rng.shuffle(kinds)
    gap = options.restart_pause + FAULT_SPACING_SECONDS
    start = 0.1 * sending
    window = max(0.8 * sending, gap * len(kinds))
    slot = window / max(1, len(kinds))
    planned = [
        PlannedFault(round(start + i * slot + rng.uniform(0.0, slot - gap), 2), kind)
        for i, kind in enumerate(kinds)
    ]
    if options.destination_down_seconds > 0:
        # The outage starts a few seconds before the first Redis restart when there is one, so
        # that the restart finds delivery retries waiting in a worker (countdown messages).
        restarts = [p.offset for p in planned if p.kind == "restart_redis"]
        lead = rng.uniform(2.0, max(2.0, min(8.0, 0.5 * options.destination_down_seconds)))
        began = restarts[0] - lead if restarts else rng.uniform(0.15, 0.45) * sending
        planned.append(
            PlannedFault(
                round(max(0.0, began), 2), "destination_down", options.destination_down_seconds
            )
        )
    return sorted(planned, key=lambda p: p.offset)


class ChaosRun:
    """One run: processes, senders, faults, the wait, the verdict. ``run()`` cleans up always."""

    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.work = (options.work_dir or Path(tempfile.mkdtemp(prefix="cxr-chaos-"))).resolve()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.exits: list[ProcessExit] = []
        self.errors: list[str] = []
        self.acks: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        self.given_up: list[str] = []
        self.studies: list[Dataset] = []
        self.processes: dict[str, Supervised] = {}
        self.threads: list[threading.Thread] = []
        self.origin = 0.0
        self._next = 0
        self.warm_up_study = ""
        self.failures: dict[str, int] = {}
        """Failed send attempts by what went wrong."""
        self.last_failure: dict[str, str] = {}

    # --- set-up -------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        if not self.options.quiet:
            print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _cxr_node(self) -> list[str]:
        script = Path(sys.executable).parent / "cxr-node"
        return [str(script)] if script.exists() else [sys.executable, "-m", "cxr_node"]

    def setup(self) -> None:
        """Models, configuration, Redis, the destination, serve and the two workers."""
        self.work.mkdir(parents=True, exist_ok=True)
        data = self.work / "node"
        env = self._env()
        subprocess.run(
            [*self._cxr_node(), "models", "init-demo", "--if-none", "--data-dir", str(data)],
            check=True,
            capture_output=True,
            env=env,
            cwd=REPO,
            timeout=300,
        )
        self.serve_port, redis_port, self.dest_port = free_port(), free_port(), free_port()
        self.broker = f"redis://127.0.0.1:{redis_port}/0"
        self.config = self.work / "node.yaml"
        settings = {
            "ae_title": "CXR_NODE",
            "bind_address": "127.0.0.1",
            "port": self.serve_port,
            "http_port": free_port(),  # serve as deployed: with its web app
            "http_bind_address": "127.0.0.1",
            "data_dir": str(data),
            "destinations": [f"DEST@127.0.0.1:{self.dest_port}"],
            "require_known_sources": False,
            "log_level": "INFO",
            **self.options.node_settings,
        }
        self.config.write_text(yaml.safe_dump(settings, sort_keys=False))
        self.records = self.work / "received.jsonl"
        recording = ["--ae-title", "DEST", "--record", str(self.records)]
        logs = self.work / "logs"
        redis_dir = self.work / "redis"
        redis_dir.mkdir(exist_ok=True)
        redis = shutil.which("redis-server") or "/usr/bin/redis-server"
        no_aof = ["--appendonly", "no", "--dir", str(redis_dir)]
        node = [*self._cxr_node()]
        common = ["--config", str(self.config), "--broker", self.broker]
        self.processes = {
            "redis": Supervised(
                "redis",
                [redis, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", *no_aof],
                logs / "redis.log",
                ready_port=redis_port,
            ),
            "destination": Supervised(
                "destination",
                [sys.executable, str(SUPPORT), "scp", "--port", str(self.dest_port), *recording],
                logs / "destination.log",
                env=env,
                ready_port=self.dest_port,
            ),
            "serve": Supervised(
                "serve",
                [*node, "serve", *common],
                logs / "serve.log",
                env=env,
                cwd=REPO,
                ready_port=self.serve_port,
            ),
            "analysis": Supervised(
                "analysis",
                [*node, "worker", *common, "--role", "analysis"],
                logs / "analysis.log",
                env=env,
                cwd=REPO,
                ready_marker=r"worker ready|ready\.",
                ready_timeout=180.0,
            ),
            "delivery": Supervised(
                "delivery",
                [*node, "worker", *common, "--role", "delivery"],
                logs / "delivery.log",
                env=env,
                cwd=REPO,
                ready_marker=r"worker ready|ready\.",
            ),
        }
        for name in ("redis", "destination", "serve", "analysis", "delivery"):
            self.processes[name].start()
        for name in ("redis", "destination", "serve", "analysis", "delivery"):
            if not self.processes[name].wait_ready():
                raise RuntimeError(f"{name} did not start; see {self.processes[name].log}")
        self.studies = [synthetic_study(i) for i in range(self.options.studies)]
        self._warm_up()

    def _warm_up(self, timeout: float = 180.0) -> None:
        """One study through the whole pipeline before the clock starts (models warm, an
        association to the destination open); not counted."""
        warm = synthetic_study(len(self.studies))
        self.warm_up_study = str(warm.StudyInstanceUID)
        self._send_until_acked(self._sender_ae(), warm, time.time() + 60)
        with self.lock:
            acked = self.acks.pop(self.warm_up_study, None)
            self.attempts.pop(self.warm_up_study, None)
        if acked is None or not wait_until(
            lambda: self.warm_up_study in self.delivered(), timeout, 0.2
        ):
            raise RuntimeError(f"the warm-up study did not come back; see {self.work}/logs")

    # --- senders ------------------------------------------------------------------------

    def _sender_ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title="CHAOS_SCU")
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 10, 30, 30
        ae.connection_timeout = 5
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian])
        return ae

    def _sender(self) -> None:
        ae = self._sender_ae()
        rate = self.options.rate
        while not self.stop.is_set():
            with self.lock:
                index, self._next = self._next, self._next + 1
            if index >= len(self.studies):
                return
            turn = self.origin + index / rate
            if self.stop.wait(max(0.0, turn - time.time())):
                return
            self._send_until_acked(ae, self.studies[index], turn + self.options.sender_grace)

    def _send_until_acked(self, ae: Any, dataset: Dataset, deadline: float) -> None:
        study = str(dataset.StudyInstanceUID)
        while not self.stop.is_set() and time.time() < deadline:
            with self.lock:
                self.attempts[study] = self.attempts.get(study, 0) + 1
            outcome = self._send_once(ae, dataset)
            if outcome == "success":
                with self.lock:
                    self.acks.setdefault(study, time.time())
                return
            with self.lock:
                self.failures[outcome] = self.failures.get(outcome, 0) + 1
                self.last_failure[study] = outcome
            self.stop.wait(0.5)
        with self.lock:
            self.given_up.append(study)

    def _send_once(self, ae: Any, dataset: Dataset) -> str:
        """One association, one C-STORE: "success" or what went wrong."""
        if not listening(self.serve_port):  # never a bare TCP probe: see listening()
            return "serve not listening"
        association = ae.associate("127.0.0.1", self.serve_port, ae_title="CXR_NODE")
        try:
            if association.is_rejected:
                rejection = association.acceptor.primitive
                return f"association rejected ({getattr(rejection, 'reason_str', '?')})"
            if not association.is_established:
                return "association aborted or timed out"
            answer = association.send_c_store(dataset)
            if "Status" not in answer:
                return "no C-STORE response"
            code = int(answer.Status)
            return "success" if code == 0x0000 else f"C-STORE status 0x{code:04X}"
        finally:
            if association.is_established:
                association.release()

    # --- faults -------------------------------------------------------------------------

    def _record(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def _kill_and_restart(self, kind: str) -> None:
        target = self.processes[TARGETS[kind]]
        began = time.time()
        killed = target.kill()
        self._say(f"{kind}: killed pid {killed}")
        if self.stop.wait(self.options.restart_pause):
            return  # the run is ending: nothing to restart
        target.start()
        ready = target.wait_ready()
        self._record(Fault(kind, target.name, began, time.time(), {"pid": killed, "ready": ready}))
        self._say(f"{kind}: {target.name} back (pid {target.pid}, ready {ready})")

    def _destination_down(self, seconds: float) -> None:
        destination = self.processes["destination"]
        began = time.time()
        destination.stop(grace=10)
        self._say(f"destination down for {seconds:.0f} s")
        if self.stop.wait(seconds):
            return
        destination.start()
        ready = destination.wait_ready()
        self._record(Fault("destination_down", "destination", began, time.time(), {"ready": ready}))
        self._say("destination back")

    def _injector(self, plan: list[PlannedFault]) -> None:
        outages: list[threading.Thread] = []
        for planned in plan:
            if self.stop.wait(max(0.0, self.origin + planned.offset - time.time())):
                break
            if planned.kind == "destination_down":
                outage = threading.Thread(
                    target=self._guarded,
                    args=(self._destination_down, planned.duration),
                    name="destination-outage",
                    daemon=True,
                )
                outage.start()
                outages.append(outage)
            else:
                self._kill_and_restart(planned.kind)
        for outage in outages:
            outage.join()

    def _watcher(self) -> None:
        """Restart any process that exited by itself, recording its exit code."""
        while not self.stop.wait(0.25):
            for process in self.processes.values():
                gone = process.exited_by_itself()
                if gone is None:
                    continue
                self._say(f"{gone.name} (pid {gone.pid}) exited by itself with {gone.code}")
                with self.lock:
                    self.exits.append(gone)
                threading.Thread(
                    target=self._guarded, args=(self._restart, process, gone), daemon=True
                ).start()

    def _restart(self, process: Supervised, gone: ProcessExit) -> None:
        self.stop.wait(self.options.restart_pause)
        if self.stop.is_set():
            return
        gone.restarted_at = process.start()
        ready = process.wait_ready()
        self._record(
            Fault(
                "exited",
                process.name,
                gone.at,
                time.time(),
                {"exit_code": gone.code, "pid": gone.pid, "ready": ready},
            )
        )

    def _guarded(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # a harness thread must never die silently
            with self.lock:
                self.errors.append(f"{getattr(target, '__name__', target)}: {exc!r}")

    def _thread(self, target: Any, *args: Any, name: str) -> threading.Thread:
        thread = threading.Thread(
            target=self._guarded, args=(target, *args), name=name, daemon=True
        )
        thread.start()
        self.threads.append(thread)
        return thread

    # --- the run ------------------------------------------------------------------------

    def delivered(self) -> set[str]:
        """Studies with at least one SR and one SC at the destination now."""
        kinds: dict[str, set[str]] = {}
        for record in read_records(self.records):
            kind = "sc" if record["sop_class"] == "1.2.840.10008.5.1.4.1.1.7" else "sr"
            kinds.setdefault(str(record["study"]), set()).add(kind)
        return {study for study, got in kinds.items() if got >= {"sr", "sc"}}

    def _join(self, threads: list[threading.Thread], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in threads:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.5)

    def run(self) -> dict[str, Any]:
        """Set up, send with faults, wait, judge; every process is stopped on the way out."""
        quiet = logging.getLogger("pynetdicom")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # refused and aborted associations are expected
        began = time.time()
        try:
            self._say(f"work folder {self.work}")
            self.setup()
            setup_s = time.time() - began
            plan = plan_faults(self.options)
            self._say(
                f"sending {self.options.studies} studies at {self.options.rate:g}/s; faults: "
                + (", ".join(f"{p.kind}@{p.offset:g}s" for p in plan) or "none")
            )
            self.origin = time.time()
            self._thread(self._watcher, name="watcher")
            senders = [
                self._thread(self._sender, name=f"sender-{i}")
                for i in range(self.options.sender_threads)
            ]
            injector = self._thread(self._injector, plan, name="injector")
            sending = self.options.studies / self.options.rate
            self._join(senders, sending + self.options.sender_grace + 60)
            sent_s = time.time() - self.origin
            self._join([injector], 600)
            injected_s = time.time() - self.origin
            self._say(
                f"{len(self.acks)} acknowledged in {sent_s:.0f} s; faults done at "
                f"{injected_s:.0f} s; waiting up to {self.options.max_wait:.0f} s for results"
            )
            waiting = time.time()
            deadline = waiting + self.options.max_wait
            last_report = waiting
            while time.time() < deadline:
                missing = set(self.acks) - self.delivered()
                if not missing:
                    break
                if time.time() - last_report >= 30:
                    self._say(f"still waiting for {len(missing)} studies")
                    last_report = time.time()
                time.sleep(1.0)
            wait_s = time.time() - waiting
            self.stop.wait(self.options.settle_seconds)  # late duplicates still count
        finally:
            self.stop.set()
            self.shutdown()
            quiet.setLevel(level)
        return self.report(began, setup_s, sent_s, injected_s, wait_s)

    def shutdown(self) -> None:
        """Stop every thread and process the run started (also after an error or Ctrl-C)."""
        self.stop.set()
        self._join(self.threads, 30)
        for name in ("serve", "analysis", "delivery", "destination", "redis"):
            process = self.processes.get(name)
            if process is not None:
                with contextlib.suppress(Exception):
                    process.stop(grace=15, retire=True)

    def report(
        self, began: float, setup_s: float, sent_s: float, injected_s: float, wait_s: float
    ) -> dict[str, Any]:
        """The verdict and everything it rests on, as JSON-ready data."""
        given_up = set(self.given_up) - set(self.acks)
        statuses, ledger_error = ledger_statuses(self.config, sorted(self.acks), self._env())
        verdict = judge(
            self.acks,
            sorted(given_up),
            read_records(self.records),
            self.faults,
            statuses,
            self.origin,
            self.options.limit_seconds,
            ignored={self.warm_up_study},
        )
        for entry in verdict["per_study"]:
            entry["send_attempts"] = self.attempts.get(entry["study"], 0)
            entry["last_send_failure"] = self.last_failure.get(entry["study"])
        options = asdict(self.options)
        options["work_dir"], options["json_out"] = str(self.work), str(self.options.json_out)
        exits = [e.as_json() for e in self.exits]
        faults = sorted(self.faults, key=lambda f: f.started_at)
        report = {
            "options": options,
            "node_code": node_code(),
            "timing_s": {
                "setup": round(setup_s, 1),
                "sending": round(sent_s, 1),
                "faults_done": round(injected_s, 1),
                "waiting_for_results": round(wait_s, 1),
                "total": round(time.time() - began, 1),
            },
            **{k: verdict[k] for k in ("studies", "ack_to_delivered_s", "delay_past_fault_s")},
            "faults": [f.as_json(self.origin) for f in faults],
            "process_exits": exits,
            "exits_with_code_0": sum(1 for e in exits if e["exit_code"] == 0),
            "ledger_error": ledger_error,
            "harness_errors": self.errors,
            "log_findings": log_findings(sorted((self.work / "logs").glob("*.log"))),
            "never_acknowledged": [
                {"study": uid, "last_send_failure": self.last_failure.get(uid)}
                for uid in verdict["never_acknowledged"]
            ],
            "send_failures": self.failures,
            "per_study": verdict["per_study"],
            "work_dir": str(self.work),
        }
        out = self.options.json_out or self.work / "chaos.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        report["json_out"] = str(out)
        return report


def node_code() -> dict[str, Any]:
    """The commit measured and how many files differ from it (others may be editing)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        changed = [line for line in git("status", "--porcelain").splitlines() if line]
        return {"commit": git("rev-parse", "--short", "HEAD"), "changed_files": len(changed)}
    return {}


def describe(report: dict[str, Any]) -> str:
    """The summary printed at the end of a run."""
    s, lat, delay = report["studies"], report["ack_to_delivered_s"], report["delay_past_fault_s"]
    over = next(k for k in delay if k.startswith("over_"))
    code = report.get("node_code") or {}
    lines = [
        f"node code: commit {code.get('commit')} with {code.get('changed_files')} changed files",
        f"studies: {s['sent']} sent, {s['acknowledged']} acknowledged, "
        f"{s['never_acknowledged']} never acknowledged; failed send attempts: "
        + (", ".join(f"{k} x{n}" for k, n in sorted(report["send_failures"].items())) or "none"),
        f"delivered: {s['delivered']}, missing: {s['missing']}; exactly once: {s['exactly_once']}, "
        f"not exactly once: {s['not_exactly_once']}, of which "
        f"{s['not_exactly_once_in_flight_at_kill']} only by a result in flight at a delivery "
        f"kill ({s['duplicate_receptions']} duplicate "
        f"receptions in {s['studies_with_duplicates']} studies, "
        f"{s['studies_with_unexpected_instances']} with unexpected instances; expected instances "
        f"from the ledger for {s['expected_from_ledger']})",
        f"ack to delivered: median {lat['median']} s, p95 {lat['p95']} s, max {lat['max']} s",
        f"delay past fault end: median {delay['median']} s, p95 {delay['p95']} s, "
        f"max {delay['max']} s; {over.replace('_', ' ')}: {delay[over]}",
        "faults: "
        + ", ".join(
            f"{f['kind']}({f['target']}) {f['start_s']}-{f['end_s']} s" for f in report["faults"]
        ),
        f"processes that exited by themselves: {len(report['process_exits'])}, "
        f"with exit code 0: {report['exits_with_code_0']}",
    ]
    for gone in report["process_exits"]:
        lines.append(
            f"  {gone['process']} pid {gone['pid']} exited {gone['exit_code']}"
            + (
                ""
                if gone["restart_on_failure_would_restart"]
                else " (restart-on-failure: left down)"
            )
        )
    missing = [p for p in report["per_study"] if "missing" in p]
    for entry in missing[:10]:
        lines.append(
            f"  missing {entry['study']}: {entry['missing']}, ledger {entry['ledger_state']} "
            f"{entry['ledger_reason'] or ''}, received {entry['received']}"
        )
    if report["ledger_error"]:
        lines.append(f"ledger: {report['ledger_error']}")
    if report["harness_errors"]:
        lines.append(f"harness errors: {report['harness_errors']}")
    t = report["timing_s"]
    lines.append(
        f"timing: setup {t['setup']} s, sending {t['sending']} s, "
        f"waiting {t['waiting_for_results']} s, total {t['total']} s; "
        f"JSON {report['json_out']}; logs {report['work_dir']}/logs"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> ChaosOptions:
    """Options from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1.0, help="studies sent per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--destination-down-seconds", type=float, default=60.0)
    parser.add_argument("--restart-pause", type=float, default=2.0)
    parser.add_argument("--kills-per-kind", type=int, help="default: 1 per 100 studies")
    parser.add_argument("--no-faults", action="store_true", help="a baseline without faults")
    parser.add_argument("--max-wait", type=float, default=900.0)
    parser.add_argument("--settle-seconds", type=float, default=10.0)
    parser.add_argument("--limit-seconds", type=float, default=90.0, help="delay reported over")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra node setting (YAML value), e.g. --set delivery_retry_max_seconds=30",
    )
    args = parser.parse_args(argv)
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key.strip()] = yaml.safe_load(value)
    return ChaosOptions(
        studies=args.studies,
        rate=args.rate,
        seed=args.seed,
        destination_down_seconds=args.destination_down_seconds,
        restart_pause=args.restart_pause,
        kills_per_kind=args.kills_per_kind,
        faults=not args.no_faults,
        max_wait=args.max_wait,
        settle_seconds=args.settle_seconds,
        limit_seconds=args.limit_seconds,
        work_dir=args.work_dir,
        json_out=args.json_out,
        node_settings=extra,
    )


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run once, print the summary; exit 1 when a study is missing or not exactly once."""
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # cleaned up like Ctrl-C
    signal.signal(signal.SIGINT, _interrupt)  # also where a shell started it ignoring SIGINT
    run = ChaosRun(options)
    try:
        report = run.run()
    except KeyboardInterrupt:
        print(f"interrupted; processes stopped; logs in {run.work}", file=sys.stderr)
        return 130
    print(describe(report))
    studies = report["studies"]
    duplicated = studies["not_exactly_once"] - studies["not_exactly_once_in_flight_at_kill"]
    return 0 if studies["missing"] == 0 and duplicated == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
