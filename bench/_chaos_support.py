"""Helpers for ``bench/chaos.py``: supervised processes, synthetic studies, a recording Storage
SCP and a ledger reader (both run as subprocesses of this file), and the recovery report.

Run as a script it is one of two helpers the harness starts:

    python bench/_chaos_support.py scp --port P --ae-title DEST --record FILE
    python bench/_chaos_support.py ledger --config CFG < uids.txt > statuses.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT = "1.2.840.10008.1.2"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
"""Every SR storage SOP class (PS3.4 B.5) starts with this."""


# --- small utilities ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """Whether a socket listens on the TCP port (from /proc/net/tcp, without connecting).

    A probe that connects and closes would hold one of a pynetdicom listener's association
    slots until its ACSE timeout (30 s in pynetdicom 3.0): enough probes and the node answers
    every caller "Local limit exceeded".
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as stream:
            for line in stream.readlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == "0A":
                    return True
    return False


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return the last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def summary(values: list[float]) -> dict[str, float | None]:
    """Median, 95th percentile and max of ``values`` (None when empty)."""
    if not values:
        return {"median": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "median": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
    }


# --- synthetic studies --------------------------------------------------------------------


def _pixels(rows: int, columns: int, index: int) -> np.ndarray:
    """A smooth chest-like uint16 gradient (12 bits stored), slightly different per study."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    lungs = np.zeros_like(x)
    for centre in (0.3, 0.7):
        lungs += np.exp(
            -(((x - columns * centre) / (columns * 0.15)) ** 2)
            - ((y - rows * 0.5) / (rows * 0.3)) ** 2
        )
    image = 3000.0 - 2000.0 * lungs + (index % 97)
    pixels: np.ndarray = np.clip(image, 0, 4095).astype(np.uint16)
    return pixels


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def synthetic_study(index: int, size: int = 256) -> Dataset:
    """A synthetic DX For Presentation chest PA with fresh Study/Series/SOP Instance UIDs."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "SYNTHETIC^CHAOS"
    ds.PatientID = f"CHAOS-{index:05d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101500", f"C{index}"
    ds.AccessionNumber = f"CHAOS{index:05d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST PA (synthetic)"
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Synthetic Imaging"
    ds.PatientPosition = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20240102", "101501"
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = _pixels(size, size, index).tobytes()
    ds.ImageLaterality = "U"
    ds.BodyPartExamined = "CHEST"
    ds.AnatomicRegionSequence = Sequence([_code("816094009", "SCT", "Chest")])
    ds.ViewPosition = "PA"
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


# --- supervised processes -----------------------------------------------------------------


@dataclass
class ProcessExit:
    """A supervised process that ended without the harness killing it."""

    name: str
    pid: int
    code: int
    at: float
    restarted_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        """JSON-ready, with what a restart-on-failure supervisor would have done."""
        return {
            "process": self.name,
            "pid": self.pid,
            "exit_code": self.code,
            "at": self.at,
            "restarted_at": self.restarted_at,
            "restart_on_failure_would_restart": self.code != 0,
        }


class Supervised:
    """One child process the harness starts, kills, restarts and watches, logging to a file.

    ``ready`` says when a (re)started process is usable; ``ready_marker`` (a regex) is looked
    for in the log written since the start when given. Children run in their own session, so
    a Ctrl-C in the terminal reaches only the harness, which then stops them itself.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_port: int | None = None,
        ready_marker: str | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.cwd = cwd
        self.ready_port = ready_port
        self.ready_marker = re.compile(ready_marker) if ready_marker else None
        self.ready_timeout = ready_timeout
        self.lock = threading.RLock()
        self.process: subprocess.Popen[bytes] | None = None
        self.held_down = False
        """Set while the harness keeps it down on purpose (the watcher leaves it alone)."""
        self.retired = False
        """Set at the end of a run: never started again."""
        self.starts = 0
        self._log_offset = 0

    def start(self) -> float:
        """Start it (unless it is running already) and return when (epoch seconds)."""
        with self.lock:
            if self.retired:
                return time.time()
            if self.alive():
                self.held_down = False
                return time.time()
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as stream:
                self._log_offset = stream.tell()
                stream.write(
                    f"=== chaos harness: starting {self.name} at {time.time():.3f}\n".encode()
                )
                stream.flush()
                self.process = subprocess.Popen(
                    self.argv,
                    stdout=stream,
                    stderr=stream,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            self.starts += 1
            self.held_down = False
            return time.time()

    def wait_ready(self) -> bool:
        """Block until it is usable (port open, marker logged) or has died or timed out."""

        def ready() -> bool:
            if not self.alive():
                return True  # reported by the watcher; do not wait for a corpse
            if self.ready_port is not None and not listening(self.ready_port):
                return False
            if self.ready_marker is not None:
                with self.log.open("rb") as stream:
                    stream.seek(self._log_offset)
                    text = stream.read().decode(errors="replace")
                return bool(self.ready_marker.search(text))
            return True

        return wait_until(ready, self.ready_timeout, 0.1) and self.alive()

    @property
    def pid(self) -> int | None:
        """The current process id, if started."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """Whether the current process is running."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> int | None:
        """SIGKILL (as a crash would) and hold it down; return the pid killed."""
        with self.lock:
            self.held_down = True
            process = self.process
            if process is None or process.poll() is not None:
                return None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
            return process.pid

    def stop(self, grace: float = 20.0, retire: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; hold it down (for good when
        ``retire``); return the exit code."""
        with self.lock:
            self.held_down = True
            self.retired = self.retired or retire
            process = self.process
            if process is None:
                return None
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    process.wait(grace)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything it left in its group
            return process.returncode

    def exited_by_itself(self) -> ProcessExit | None:
        """A process that ended while the harness was not holding it down, else None."""
        with self.lock:
            process = self.process
            if self.held_down or process is None or process.poll() is None:
                return None
            self.held_down = True  # reported once; the watcher restarts it
            return ProcessExit(self.name, process.pid, int(process.returncode), time.time())


# --- the recording destination (a subprocess) ----------------------------------------------


def run_scp(port: int, ae_title: str, record: Path) -> int:
    """A Storage SCP appending one JSON line per C-STORE to ``record`` (fsynced before the
    response). On SIGTERM it answers 0xA700 to stores that arrive, lets responses in flight go
    out, stops listening, aborts its open associations (a peer's pooled one too) and exits."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    closing = threading.Event()
    lock = threading.Lock()
    stream = record.open("a", encoding="utf-8")

    def on_store(event: Any) -> int:
        if closing.is_set():
            return 0xA700
        received_at = time.time()
        raw = event.request.DataSet.getvalue()
        dataset = event.dataset
        line = json.dumps(
            {
                "sop": str(dataset.SOPInstanceUID),
                "study": str(dataset.StudyInstanceUID),
                "sop_class": str(event.context.abstract_syntax),
                "at": received_at,
                "digest": hashlib.sha256(raw).hexdigest()[:16],
                "calling_ae": str(event.assoc.requestor.ae_title),
            }
        )
        with lock:
            stream.write(line + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        return 0x0000

    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 32
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian, IMPLICIT])
    ae.add_supported_context(Verification)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None
    print(f"destination {ae_title} listening on {port}", flush=True)
    while not stop.wait(0.5):
        pass
    closing.set()
    time.sleep(0.3)  # responses to stores already recorded go out
    server.shutdown()  # stops listening; open associations would live on without:
    for association in list(ae.active_associations):
        association.abort()
    with lock:
        stream.close()
    print("destination stopped", flush=True)
    return 0


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line the destination recorded (a torn last line is skipped)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


# --- the ledger, through the CLI ----------------------------------------------------------


def run_ledger(config: Path) -> int:
    """For each Study Instance UID on stdin, what ``cxr-node status UID --json`` says, as one
    JSON object on stdout (one process, not one per study)."""
    from cxr_node.cli import main as cxr_node_main

    statuses: dict[str, Any] = {}
    for uid in sys.stdin.read().split():
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = cxr_node_main(["status", uid, "--json", "--config", str(config)])
        try:
            statuses[uid] = json.loads(captured.getvalue()) if code == 0 else None
        except json.JSONDecodeError:
            statuses[uid] = None
    sys.stdout.write(json.dumps(statuses))
    return 0


def ledger_statuses(
    config: Path, uids: list[str], env: dict[str, str], timeout: float = 300.0
) -> tuple[dict[str, Any], str | None]:
    """The ledger's view of each study (or an error text when it could not be read)."""
    try:
        done = subprocess.run(
            [sys.executable, __file__, "ledger", "--config", str(config)],
            input="\n".join(uids),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {}, f"ledger read timed out after {timeout:.0f} s"
    if done.returncode != 0:
        return {}, f"ledger read failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    try:
        return json.loads(done.stdout), None
    except json.JSONDecodeError:
        return {}, "ledger read printed no JSON"


# --- logs -----------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\b\d{4}-\d\d-\d\dT[\d:.]+\b|\b[0-9a-f]{8,}\b|\d+(\.\d+)*|'[^']*'|\"[^\"]*\"|pid \d+"
)
_NOTEWORTHY = re.compile(r"\b(ERROR|CRITICAL|Traceback|WARNING)\b|exited with|lost|unreachable")


def log_findings(logs: Iterable[Path], top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Warnings, errors and tracebacks in each log, grouped once numbers and UIDs are masked."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in logs:
        if not path.exists():
            continue
        counts: Counter[str] = Counter()
        example: dict[str, str] = {}
        for line in path.read_text(errors="replace").splitlines():
            if not _NOTEWORTHY.search(line) or line.startswith("=== chaos harness"):
                continue
            text = line.split(" ", 1)[1] if line[:4].isdigit() else line  # drop the timestamp
            key = _VARIABLE.sub("#", text).strip()[:200]
            counts[key] += 1
            example.setdefault(key, line[:300])
        found[path.name] = [
            {"count": n, "pattern": key, "example": example[key]}
            for key, n in counts.most_common(top)
        ]
    return found


# --- the verdict ----------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected fault (or a process that exited by itself), times in epoch seconds."""

    kind: str
    target: str
    started_at: float
    ended_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self, origin: float) -> dict[str, Any]:
        """JSON-ready, with times also relative to the start of sending."""
        return {
            "kind": self.kind,
            "target": self.target,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "start_s": round(self.started_at - origin, 2),
            "end_s": None if self.ended_at is None else round(self.ended_at - origin, 2),
            **self.detail,
        }


def delaying_fault(faults: list[Fault], acked_at: float, delivered_at: float) -> Fault | None:
    """The fault that ended last before ``delivered_at``, if it ended after ``acked_at``."""
    ended = [f for f in faults if f.ended_at is not None and f.ended_at < delivered_at]
    if not ended:
        return None
    last = max(ended, key=lambda f: f.ended_at or 0.0)
    return last if (last.ended_at or 0.0) > acked_at else None


def _expected_from_ledger(status: dict[str, Any] | None) -> list[str] | None:
    if not status:
        return None
    results = status.get("results")
    if not isinstance(results, list) or not results:
        return None
    return [str(r["sop_instance_uid"]) for r in results if "sop_instance_uid" in r]


DELIVERY_KILL = "kill_delivery"
IN_FLIGHT_SECONDS = 0.5
"""A reception this close before a SIGKILL of the delivery worker was in flight at the kill."""


def judge(
    acks: dict[str, float],
    never_acked: list[str],
    records: list[dict[str, Any]],
    faults: list[Fault],
    statuses: dict[str, Any],
    origin: float,
    limit: float = 90.0,
    ignored: set[str] | None = None,
) -> dict[str, Any]:
    """Exactly-once, completeness and delays for every acknowledged study.

    A study is delivered when one SR and one SC of it have arrived (``delivered_at`` is when the
    later of the two first arrived). Its expected result instances are those the ledger lists;
    without the ledger, one SR and one SC. Exactly once: each expected instance received once,
    nothing else received for the study. Delay past fault: ``delivered_at - max(acked_at, end of
    the last fault that ended before delivered_at)``. Studies in ``ignored`` (the warm-up) are
    not counted anywhere.

    A duplicate reception whose first copy arrived at most ``IN_FLIGHT_SECONDS`` before the
    delivery worker was SIGKILLed is counted apart (``duplicates_in_flight_at_kill``): the
    destination stored it, and the response, or our record of it, died with the worker; DICOM
    has no transactional store, so no sender can avoid that one. Every other duplicate is a bug.
    """
    kills = [f.started_at for f in faults if f.kind == DELIVERY_KILL]
    by_study: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_study.setdefault(str(record["study"]), []).append(record)
    per_study: list[dict[str, Any]] = []
    counts = Counter[str]()
    latencies: list[float] = []
    delays: list[float] = []
    for study, acked_at in sorted(acks.items(), key=lambda item: item[1]):
        got = sorted(by_study.get(study, []), key=lambda r: float(r["at"]))
        receptions = Counter(str(r["sop"]) for r in got)
        first_at: dict[str, float] = {}
        classes: dict[str, str] = {}
        for r in got:
            first_at.setdefault(str(r["sop"]), float(r["at"]))
            classes[str(r["sop"])] = str(r["sop_class"])
        sr = [s for s in first_at if classes[s].startswith(SR_PREFIX)]
        sc = [s for s in first_at if classes[s] == SECONDARY_CAPTURE]
        status = statuses.get(study)
        expected = _expected_from_ledger(status)
        source = "ledger"
        if expected is None:
            source = "one SR + one SC"
        entry: dict[str, Any] = {
            "study": study,
            "acked_s": round(acked_at - origin, 2),
            "ledger_state": status.get("state") if status else None,
            "ledger_reason": status.get("reason_code") if status else None,
            "analysis_attempts": status.get("analysis_attempts") if status else None,
            "received": dict(receptions),
            "expected_from": source,
        }
        if sr and sc:
            delivered_at = max(min(first_at[s] for s in sr), min(first_at[s] for s in sc))
            fault = delaying_fault(faults, acked_at, delivered_at)
            reference = acked_at if fault is None else max(acked_at, fault.ended_at or acked_at)
            entry["delivered_s"] = round(delivered_at - origin, 2)
            entry["ack_to_delivered_s"] = round(delivered_at - acked_at, 2)
            entry["delay_past_fault_s"] = round(delivered_at - reference, 2)
            entry["delaying_fault"] = None if fault is None else f"{fault.kind}@{fault.target}"
            latencies.append(delivered_at - acked_at)
            delays.append(delivered_at - reference)
            counts["delivered"] += 1
        else:
            counts["missing"] += 1
            entry["missing"] = "no SR" if not sr else "no SC"
        if expected is None:
            once = (
                len(sr) == 1
                and len(sc) == 1
                and len(first_at) == 2
                and all(n == 1 for n in receptions.values())
            )
            missing_expected: list[str] = []
            extra = [] if once else sorted(first_at)
            right_instances = len(sr) == 1 and len(sc) == 1 and len(first_at) == 2
        else:
            missing_expected = [s for s in expected if s not in receptions]
            extra = sorted(s for s in receptions if s not in expected)
            once = not missing_expected and not extra and all(receptions[s] == 1 for s in expected)
            right_instances = not missing_expected and not extra
        duplicates = sum(n - 1 for n in receptions.values())
        in_flight = sum(
            n - 1
            for sop, n in receptions.items()
            if n > 1 and any(0 <= k - first_at[sop] <= IN_FLIGHT_SECONDS for k in kills)
        )
        entry["duplicates_in_flight_at_kill"] = in_flight
        once_but_in_flight = (
            not once and in_flight == duplicates and right_instances and bool(sr and sc)
        )
        counts["not_exactly_once_in_flight_at_kill"] += once_but_in_flight
        entry["exactly_once"] = once and bool(sr and sc)
        entry["duplicate_receptions"] = duplicates
        entry["unexpected_instances"] = extra
        entry["expected_not_received"] = missing_expected
        counts["exactly_once"] += entry["exactly_once"]
        counts["duplicate_receptions"] += duplicates
        counts["studies_with_duplicates"] += duplicates > 0
        counts["studies_with_unexpected_instances"] += bool(extra)
        counts["expected_from_ledger"] += source == "ledger"
        per_study.append(entry)
    stray = sorted(set(by_study) - set(acks) - (ignored or set()))
    return {
        "studies": {
            "sent": len(acks) + len(never_acked),
            "acknowledged": len(acks),
            "never_acknowledged": len(never_acked),
            "delivered": counts["delivered"],
            "missing": counts["missing"],
            "exactly_once": counts["exactly_once"],
            "not_exactly_once": len(acks) - counts["exactly_once"],
            # of which only by an instance in flight when the delivery worker was killed
            "not_exactly_once_in_flight_at_kill": counts["not_exactly_once_in_flight_at_kill"],
            "duplicate_receptions": counts["duplicate_receptions"],
            "studies_with_duplicates": counts["studies_with_duplicates"],
            "studies_with_unexpected_instances": counts["studies_with_unexpected_instances"],
            "expected_from_ledger": counts["expected_from_ledger"],
            "results_for_unacknowledged_studies": len(stray),
        },
        "ack_to_delivered_s": summary(latencies),
        "delay_past_fault_s": {
            **summary(delays),
            f"over_{limit:g}_s": sum(1 for d in delays if d > limit),
        },
        "per_study": per_study,
        "never_acknowledged": never_acked,
    }


def main(argv: list[str] | None = None) -> int:
    """The subprocess entry points: ``scp`` and ``ledger``."""
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    scp = commands.add_parser("scp")
    scp.add_argument("--port", type=int, required=True)
    scp.add_argument("--ae-title", default="DEST")
    scp.add_argument("--record", type=Path, required=True)
    ledger = commands.add_parser("ledger")
    ledger.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "scp":
        return run_scp(args.port, args.ae_title, args.record)
    return run_ledger(args.config)


if __name__ == "__main__":
    raise SystemExit(main())
