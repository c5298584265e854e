"""Fuzz campaign: what a hostile sender achieves against a real node, counted.

It starts its own node (a work folder under the system's temporary folder: DEMO models, a
configuration that admits only the calling AE title MODALITY) as ``cxr-node serve --broker``
with its own ``redis-server`` and no worker (the front door measured alone, as
``bench/ingest.py`` does), or with ``--queue embedded`` serve with its embedded workers. Then:

1. **Network cases** (``--network-cases``, default 10,000; ``tests/fuzz_network.py``): mutated
   radiographs over real associations, each file sent byte for byte (structure-aware pydicom
   mutations, byte-level mutations, deflated data sets among them a 1 MB bomb that inflates to
   over 1 GiB), hostile C-STORE commands and services the node does not provide, images of
   another patient under known UIDs, and raw PDUs over plain sockets (random and lying
   A-ASSOCIATE-RQ, unknown PDU types, lying P-DATA-TF, aborts in the middle of a data set, TCP
   bursts, 40 associations at once, a P-DATA-TF declaring 256 MB, a 64 MB A-ASSOCIATE-RQ,
   and per 1,000 cases a volley of 17 slow connections held open together for up to 15 s).
   A C-ECHO every ``--echo-every`` cases (and during every volley, after every burst) must
   be answered within ``--echo-limit`` seconds; a failed one is a lockout, and how long it
   lasts is measured (a C-ECHO a second, at most 60 s). Serve's resident memory is sampled
   every 0.1 s (its peak, and which cases were being played at the peak); its threads, open
   file descriptors, partial files left in ``spool/.tmp`` and log (tracebacks, forged lines,
   the longest line) are read at the end.
2. **Analysis cases** (``--analysis-cases``, default 1,000; ``tests/fuzzing.py``): mutated
   files through the real ``cxr-node analyze --json --out``, ``--batch`` files a call; every
   file must get an answer (analysed, or refused with a reason code; INTERNAL_ERROR is an
   unhandled exception); a batch that dies is re-run file by file to find the culprit. Every
   SR and SC it writes is checked with dciodvfy (``--validate`` caps how many): a file with
   an "Error" line is an invalid output.

Counts go to ``--out`` (JSON) and a summary table; the per-case records to
``cases.jsonl`` in the work folder. Everything is seeded (``--seed``): ``--only 12,40-45``
plays those network cases again alone, ``--dump DIR`` writes their files (and those of
``--only-analysis``) for a minimal reproducer. Every step is bounded in time (DIMSE timeout,
socket deadlines, ``--max-minutes`` per phase); the run always ends by itself.

    .venv/bin/python bench/fuzz.py [--seed 12] [--network-cases 10000] [--analysis-cases 1000]
        [--out fuzz.json] [--queue redis|embedded] [--work-dir DIR] [--keep-work]

The corpus is ``CXR_CORPUS`` (default ``../shared/cxr-corpus``); its files are read, never
copied into the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _chaos_support import Supervised, free_port, log_findings, summary  # noqa: E402

from tests import fuzz_network as fn  # noqa: E402
from tests import fuzzing as fz  # noqa: E402

DCIODVFY = "/usr/bin/dciodvfy"
LOCKOUT_WATCH_SECONDS = 60.0
"""After a failed C-ECHO, one a second until one is answered, at most this long."""
SETTLE_SECONDS = 10.0
"""Quiet time after the last case before serve's threads, descriptors and spool are read."""


def say(text: str) -> None:
    print(f"[fuzz {time.strftime('%H:%M:%S')}] {text}", flush=True)


def parse_indexes(text: str | None) -> list[int] | None:
    """'12,40-45' -> [12, 40, 41, 42, 43, 44, 45]."""
    if not text:
        return None
    indexes: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        indexes += list(range(int(first), int(last or first) + 1))
    return indexes


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, {} once it is gone."""
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return values


def open_fds(pid: int) -> dict[str, Any]:
    """How many descriptors the process holds: all, sockets, files under the spool."""
    kinds: Counter[str] = Counter()
    files: list[str] = []
    try:
        entries = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return {}
    for entry in entries:
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if target.startswith("socket:"):
            kinds["sockets"] += 1
        elif target.startswith("/"):
            kinds["files"] += 1
            if "/spool/" in target:
                files.append(target)
        else:
            kinds["other"] += 1
    return {"total": sum(kinds.values()), **kinds, "spool_files": files[:20]}


class MemorySampler(threading.Thread):
    """Serve's VmRSS and thread count every 0.1 s: peak, when, and what was being played."""

    def __init__(self, pid: int, in_flight: Any) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.in_flight = in_flight
        self.stop = threading.Event()
        self.peak_kb = 0
        self.peak_threads = 0
        self.peak_cases: list[str] = []
        self.timeline: list[tuple[float, float]] = []
        self.began = time.monotonic()

    def run(self) -> None:
        last_kept = 0.0
        while not self.stop.wait(0.1):
            values = proc_status(self.pid)
            if not values:
                continue
            rss = values.get("VmRSS", 0)
            self.peak_threads = max(self.peak_threads, values.get("Threads", 0))
            if rss > self.peak_kb:
                self.peak_kb = rss
                self.peak_cases = self.in_flight()
            now = time.monotonic() - self.began
            if now - last_kept >= 5.0:
                self.timeline.append((round(now, 1), round(rss / 1024, 1)))
                last_kept = now

    def rss_mb(self) -> float:
        return round(proc_status(self.pid).get("VmRSS", 0) / 1024, 1)


@dataclass
class Campaign:
    """One fuzz run: the node, the cases, the counts."""

    args: argparse.Namespace
    work: Path
    corpus: Path
    records: list[fn.Outcome] = field(default_factory=list)
    echoes: list[dict[str, Any]] = field(default_factory=list)
    lockouts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    playing: dict[int, str] = field(default_factory=dict)
    processes: dict[str, Supervised] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    serve_exit: int | None = None
    played: int = 0

    # --- the node -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _cxr_node(self) -> list[str]:
        script = Path(sys.executable).parent / "cxr-node"
        return [str(script)] if script.exists() else [sys.executable, "-m", "cxr_node"]

    def start_node(self) -> None:
        data = self.work / "node"
        subprocess.run(
            [*self._cxr_node(), "models", "init-demo", "--if-none", "--data-dir", str(data)],
            check=True,
            capture_output=True,
            env=self._env(),
            cwd=REPO,
            timeout=300,
        )
        self.port = free_port()
        self.config = self.work / "node.yaml"
        settings: dict[str, Any] = {
            "ae_title": fz.NODE_AE_TITLE,
            "bind_address": "127.0.0.1",
            "port": self.port,
            "http_port": free_port(),  # serve as deployed: with its web app
            "http_bind_address": "127.0.0.1",
            "data_dir": str(data),
            "require_known_sources": True,
            "sources": [{"ae_title": fz.CALLING_AE_TITLE}],
            "log_level": "INFO",
        }
        self.config.write_text(yaml.safe_dump(settings, sort_keys=False))
        logs = self.work / "logs"
        serve = [*self._cxr_node(), "serve", "--config", str(self.config)]
        if self.args.queue == "redis":
            redis_port = free_port()
            (self.work / "redis").mkdir(exist_ok=True)
            redis = shutil.which("redis-server") or "/usr/bin/redis-server"
            self.processes["redis"] = Supervised(
                "redis",
                [
                    redis,
                    *("--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""),
                    *("--appendonly", "no", "--dir", str(self.work / "redis")),
                ],
                logs / "redis.log",
                ready_port=redis_port,
            )
            serve += ["--broker", f"redis://127.0.0.1:{redis_port}/0"]
        self.processes["serve"] = Supervised(
            "serve", serve, logs / "serve.log", env=self._env(), cwd=REPO, ready_port=self.port
        )
        for process in self.processes.values():
            process.start()
            if not process.wait_ready():
                raise RuntimeError(f"{process.name} did not start; see {process.log}")
        self.spool = data / "spool"
        self.serve_pid = self._serve().pid
        self.settings = fn.Settings(
            port=self.port,
            corpus=self.corpus,
            seed=self.args.seed,
            work=self.work / "sending",
            dimse_timeout=self.args.dimse_timeout,
            echo_limit=self.args.echo_limit,
        )
        self.settings.work.mkdir(exist_ok=True)

    def _serve(self) -> Any:
        process = self.processes["serve"].process
        assert process is not None
        return process

    def serve_alive(self) -> bool:
        return self._serve().poll() is None

    def stop_node(self) -> None:
        for name in ("serve", "redis"):
            if name in self.processes:
                code = self.processes[name].stop(grace=30, retire=True)
                if name == "serve" and self.serve_exit is None:
                    self.serve_exit = code

    # --- echo probes ----------------------------------------------------------------------

    def probe(self, when: str, watch: bool = True, *, case_probe: bool = False) -> fn.EchoResult:
        """A timed C-ECHO, recorded; after a failure, how long until one is answered.

        A probe from outside a case (periodic, during a volley) first waits while a
        ``pdu:many_associations`` case holds the node's every association slot with real
        associations (a refusal then is the limit working, not a lockout); ``case_probe``:
        the case's own probe, made once its associations are released."""
        waited = 0.0 if case_probe else self._wait_for_free_slots()
        answer = fn.echo(self.settings)
        entry = {
            "after_case": self.played,
            "when": when + (f" (waited {waited:.1f} s for 40 real associations)" if waited else ""),
            "ok": answer.ok,
            "seconds": round(answer.seconds, 3),
            "result": answer.result,
        }
        with self.lock:
            self.echoes.append(entry)
        if not answer.ok and watch:
            began = time.monotonic()
            recovered: float | None = None
            while time.monotonic() - began < LOCKOUT_WATCH_SECONDS:
                time.sleep(1.0)
                if fn.echo(self.settings).ok:
                    recovered = time.monotonic() - began
                    break
            lockout = {
                **entry,
                "lasted_s": None if recovered is None else round(recovered, 1),
                "lasted_over_s": None if recovered is not None else LOCKOUT_WATCH_SECONDS,
                "playing": self.in_flight(),
            }
            with self.lock:
                self.lockouts.append(lockout)
            say(f"LOCKOUT after case {self.played} ({when}): {answer.result}; {lockout}")
        return answer

    def _wait_for_free_slots(self) -> float:
        began = time.monotonic()
        while time.monotonic() - began < 60.0:
            with self.lock:
                full = "pdu:many_associations" in self.playing.values()
            if not full:
                break
            time.sleep(0.2)
        return time.monotonic() - began if time.monotonic() - began > 0.01 else 0.0

    def in_flight(self) -> list[str]:
        with self.lock:
            return [f"{index}:{family}" for index, family in sorted(self.playing.items())]

    # --- network phase --------------------------------------------------------------------

    def _record(self, outcomes: list[fn.Outcome], log: Any) -> None:
        with self.lock:
            self.records += outcomes
            for outcome in outcomes:
                log.write(json.dumps(outcome.as_json()) + "\n")
            log.flush()

    def _play_one(self, case: fn.NetworkCase) -> list[fn.Outcome]:
        with self.lock:
            self.playing[case.index] = case.family
        try:
            return fn.play(
                case, self.settings, lambda: self.probe(f"after {case.family}", case_probe=True)
            )
        finally:
            with self.lock:
                self.playing.pop(case.index, None)

    def _volley(self, cases: list[fn.NetworkCase], log: Any) -> None:
        """Open a volley's slow connections together; a C-ECHO while they are open."""
        with ThreadPoolExecutor(max_workers=len(cases), thread_name_prefix="slow") as pool:
            futures = [pool.submit(self._play_one, case) for case in cases]
            began = time.monotonic()
            for at in (2.0, 8.0):  # all of them open; then the slow loris ones still trickling
                time.sleep(max(0.0, began + at - time.monotonic()))
                self.probe(f"{at:g} s into a volley of {len(cases)} slow connections")
            for future in futures:
                try:
                    self._record(future.result(timeout=fn.SLOW_SECONDS + 30), log)
                except Exception as exc:  # bounded above; a fuzzer bug, recorded as such
                    say(f"volley connection: {type(exc).__name__}: {exc}")

    def network(self) -> None:
        cases = fn.plan(self.args.network_cases, self.args.seed)
        only = parse_indexes(self.args.only)
        if only is not None:
            cases = [c for c in cases if c.index in set(only)]
        say(f"network: {len(cases)} cases, seed {self.args.seed}, port {self.port}")
        from pynetdicom import _config

        saved = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # files go byte for byte, as they are
        sampler = MemorySampler(self.serve_pid, self.in_flight)
        warm = fn.echo(self.settings)
        time.sleep(2.0)
        baseline = {"rss_mb": sampler.rss_mb(), "fds": open_fds(self.serve_pid)}
        sampler.start()
        began = time.monotonic()
        deadline = began + self.args.max_minutes * 60
        volley_thread: threading.Thread | None = None
        started_volleys: set[int] = set()
        not_played = 0
        log_path = self.work / "cases.jsonl"
        with log_path.open("w") as log:
            try:
                for number, case in enumerate(cases):
                    if time.monotonic() > deadline or not self.serve_alive():
                        not_played = len(cases) - number
                        break
                    if case.volley is not None:
                        if case.volley not in started_volleys:
                            started_volleys.add(case.volley)
                            if volley_thread is not None:
                                volley_thread.join(fn.SLOW_SECONDS + 60)
                            members = [c for c in cases if c.volley == case.volley]
                            volley_thread = threading.Thread(
                                target=self._volley, args=(members, log), daemon=True
                            )
                            volley_thread.start()
                    else:
                        self._record(self._play_one(case), log)
                    self.played = number + 1
                    if self.played % self.args.echo_every == 0:
                        self.probe("periodic")
                    if self.played % 250 == 0:
                        self._progress(began, len(cases), sampler)
            finally:
                if volley_thread is not None:
                    volley_thread.join(fn.SLOW_SECONDS + 60)
                _config.STORE_SEND_CHUNKED_DATASET = saved
        seconds = time.monotonic() - began
        alive = self.serve_alive()
        if alive:
            self.probe("after the last case")
            time.sleep(SETTLE_SECONDS)
        sampler.stop.set()
        sampler.join(5)
        tmp = self.spool / ".tmp"
        leftovers = sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []
        self.report["network"] = self._network_counts(len(cases), not_played, seconds)
        self.report["serve"] = {
            "pid": self.serve_pid,
            "alive_after_cases": alive,
            "exit_code": None if alive else self._serve().returncode,
            "warm_up_echo": warm.result,
            "rss_mb": {
                "baseline": baseline["rss_mb"],
                "peak": round(sampler.peak_kb / 1024, 1),
                "final": sampler.rss_mb() if alive else None,
                "cases_in_flight_at_peak": sampler.peak_cases,
                "timeline_every_5_s": sampler.timeline,
            },
            "threads": {
                "peak": sampler.peak_threads,
                "final": proc_status(self.serve_pid).get("Threads"),
            },
            "fds": {"baseline": baseline["fds"], "final": open_fds(self.serve_pid)},
            "spool_tmp_leftovers": len(leftovers),
            "spool_tmp_examples": leftovers[:10],
        }
        self.report["serve"]["conflicts_recorded"] = self._conflicts()
        if self.args.queue == "embedded":
            self.report["spool_results"] = self._validate_spool_results()

    def _validate_spool_results(self) -> dict[str, Any]:
        """The SR and SC the embedded worker wrote into the spool so far, through dciodvfy."""
        results = sorted(self.spool.glob("*/results/*.dcm"))
        cap = self.args.validate if self.args.validate is not None else len(results)
        invalid: list[dict[str, Any]] = []
        for path in results[:cap]:
            errors = dciodvfy_errors(path)
            if errors:
                kept = (
                    self.work / "invalid-outputs" / f"spool-{path.parent.parent.name}-{path.name}"
                )
                kept.parent.mkdir(exist_ok=True)
                shutil.copy(path, kept)
                invalid.append({"file": str(kept), "errors": errors[:5]})
        return {
            "found": len(results),
            "validated": min(cap, len(results)),
            "invalid": len(invalid),
            "invalid_examples": invalid[:20],
        }

    def _progress(self, began: float, total: int, sampler: MemorySampler) -> None:
        with self.lock:
            hangs = sum(1 for r in self.records if r.hang)
            violations = sum(1 for r in self.records if r.violation)
        failed = sum(1 for e in self.echoes if not e["ok"])
        say(
            f"{self.played}/{total} cases in {time.monotonic() - began:.0f} s; hangs {hangs}, "
            f"violations {violations}, failed C-ECHO {failed}; serve {sampler.rss_mb()} MB "
            f"(peak {sampler.peak_kb / 1024:.0f} MB)"
        )

    def _network_counts(self, total: int, not_played: int, seconds: float) -> dict[str, Any]:
        stores = [
            r
            for r in self.records
            if r.family in ("structure", "bytes", "deflate", "conflict", "command")
        ]
        refused: Counter[str] = Counter()
        other: Counter[str] = Counter()
        for record in stores:
            if record.status is not None:
                if record.status != 0:
                    refused[f"0x{record.status:04X}"] += 1
            else:
                other[record.result] += 1
        by_family: dict[str, Counter[str]] = {}
        for record in self.records:
            key = record.family if record.role == "case" else f"{record.family} (setup)"
            by_family.setdefault(key, Counter())[record.result] += 1
        by_kind: dict[str, Counter[str]] = {}
        for record in self.records:
            if record.family.startswith(("pdu:", "command", "deflate", "conflict")):
                name = f"{record.family}: {record.kind}"
                by_kind.setdefault(name, Counter())[record.result] += 1
        violations = Counter(r.violation for r in self.records if r.violation)
        examples: dict[str, list[dict[str, Any]]] = {}
        for record in self.records:
            if record.violation or record.hang or record.result.startswith("fuzzer error"):
                key = record.violation or ("hang" if record.hang else record.result)
                bucket = examples.setdefault(key, [])
                if len(bucket) < 5:
                    bucket.append(record.as_json())
        echo_failures = [e for e in self.echoes if not e["ok"]]
        megabytes = [
            r.detail.get("megabytes_before_answer", 0.0)
            for r in self.records
            if r.family in ("pdu:pdata_huge", "pdu:big_rq")
        ]
        return {
            "cases": total,
            "played": total - not_played,
            "not_played": not_played,
            "seconds": round(seconds, 1),
            "c_store": {
                "requests": len(stores),
                "answer_seconds": summary([r.seconds for r in stores if r.status is not None]),
                "answers_over_5_s": sum(
                    1 for r in stores if r.status is not None and r.seconds > 5
                ),
                "acknowledged": sum(1 for r in stores if r.status == 0),
                "refused_by_status": dict(sorted(refused.items())),
                "without_status": dict(other.most_common()),
            },
            "hangs": sum(1 for r in self.records if r.hang),
            "violations": dict(violations.most_common()),
            "fuzzer_errors": sum(1 for r in self.records if r.result.startswith("fuzzer error")),
            "examples": examples,
            "largest_pdu_mb_before_answer": max(megabytes, default=None),
            "echo": {
                "probes": len(self.echoes),
                "ok": len(self.echoes) - len(echo_failures),
                "failed": len(echo_failures),
                "failed_by_result": dict(Counter(e["result"] for e in echo_failures)),
                "max_seconds_ok": max((e["seconds"] for e in self.echoes if e["ok"]), default=None),
                "lockouts": self.lockouts[:50],
            },
            "by_family": {k: dict(v.most_common()) for k, v in sorted(by_family.items())},
            "by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
        }

    def _conflicts(self) -> int | None:
        """Patient conflicts the node recorded (``cxr-node conflicts --json``), if it says."""
        try:
            done = subprocess.run(
                [
                    *self._cxr_node(),
                    "conflicts",
                    "--json",
                    "--last",
                    "100000",
                    "--config",
                    str(self.config),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                env=self._env(),
                cwd=REPO,
            )
            listed = json.loads(done.stdout) if done.returncode == 0 else None
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            return None
        return len(listed) if isinstance(listed, list) else None

    def serve_log(self) -> dict[str, Any]:
        """What serve's log says: unhandled exceptions (a thread that died, an exception out of
        an event handler), every traceback by the line logged before it, forged lines and
        control characters (log injection), the longest line."""
        path = self.processes["serve"].log
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = text.split("\n")  # not splitlines(): it also splits at \r, \x0b, \x1c ...
        sources: Counter[str] = Counter()
        for number, line in enumerate(lines):
            if line.startswith("Traceback (most recent call last)") and number > 0:
                before = lines[number - 1]
                before = before.split(" ", 1)[1] if before[:4].isdigit() else before
                sources[re.sub(r"0x[0-9a-fA-F]+|'[^']*'|\d+", "#", before)[:120]] += 1
        control = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
        thread_deaths = len(re.findall(r"^Exception in thread", text, re.M))
        handlers = Counter(
            re.findall(r"Exception raised in user's '([^']+)' event handler '([^']+)'", text)
        )
        # pynetdicom's own standard_* handlers (its logging of what arrives) fail on some
        # invalid messages and pynetdicom then aborts: reported, not the node's exception
        node_handlers = sum(
            n for (_, name), n in handlers.items() if not name.startswith("standard_")
        )
        return {
            "bytes": len(text),
            "lines": len(lines),
            "unhandled_exceptions": thread_deaths + node_handlers,
            "threads_died": thread_deaths,
            "event_handler_exceptions": {
                f"{event} {name}": n for (event, name), n in handlers.items()
            },
            "tracebacks": text.count("Traceback (most recent call last)"),
            "tracebacks_by_source": dict(sources.most_common()),
            "forged_lines": sum(1 for line in lines if line.startswith("FORGED")),
            "lines_with_control_characters": sum(1 for line in lines if control.search(line)),
            "control_character_examples": [
                line.encode("unicode_escape").decode()[:200]
                for line in lines
                if control.search(line)
            ][:5],
            "longest_line": max((len(line) for line in lines), default=0),
            "findings": log_findings([path]).get(path.name, []),
        }

    # --- analysis phase -------------------------------------------------------------------

    def analysis(self) -> None:
        count = self.args.analysis_cases
        only = parse_indexes(self.args.only_analysis)
        indexes = only if only is not None else list(range(count))
        folder = self.work / "analysis"
        invalid_dir = self.work / "invalid-outputs"
        answers: Counter[str] = Counter()
        by_family: dict[str, Counter[str]] = {}
        internal: list[dict[str, Any]] = []
        unanswered: list[dict[str, Any]] = []
        batch_failures: list[dict[str, Any]] = []
        validated = invalid = 0
        invalid_examples: list[dict[str, Any]] = []
        validate_left = self.args.validate if self.args.validate is not None else 10**9
        began = time.monotonic()
        deadline = began + self.args.max_minutes * 60
        say(f"analysis: {len(indexes)} cases in batches of {self.args.batch}")
        done = 0
        for first in range(0, len(indexes), self.args.batch):
            if time.monotonic() > deadline:
                break
            batch = indexes[first : first + self.args.batch]
            shutil.rmtree(folder, ignore_errors=True)
            (folder / "in").mkdir(parents=True)
            files: dict[str, tuple[int, fz.FuzzFile]] = {}
            for index in batch:
                case = fz.analysis_file(self.corpus, self.args.seed, index)
                path = folder / "in" / f"case-{index:05d}.dcm"
                path.write_bytes(case.data)
                files[str(path)] = (index, case)
            reports, problem = self._analyze(list(files), folder / "out")
            if problem is not None:
                batch_failures.append({"first_case": batch[0], "problem": problem})
                say(f"analysis batch from case {batch[0]} failed ({problem}); file by file")
                reports = {}
                for name in files:
                    alone, alone_problem = self._analyze([name], folder / "out", timeout=300)
                    reports.update(alone)
                    if alone_problem is not None and name not in alone:
                        index, case = files[name]
                        unanswered.append(
                            {
                                "case": index,
                                "kind": f"{case.family}:{case.kind}",
                                "problem": alone_problem,
                            }
                        )
            for name, (index, case) in files.items():
                report = reports.get(name)
                if report is None:
                    if not any(u["case"] == index for u in unanswered):
                        unanswered.append(
                            {
                                "case": index,
                                "kind": f"{case.family}:{case.kind}",
                                "problem": "no entry",
                            }
                        )
                    answer = "NO ANSWER"
                else:
                    answer = str(report.get("reason_code") or "analysed")
                if answer == "INTERNAL_ERROR":
                    internal.append(
                        {"case": index, "kind": f"{case.family}:{case.kind}", **case.notes}
                    )
                answers[answer] += 1
                by_family.setdefault(case.family, Counter())[answer] += 1
                for written in (report or {}).get("written", []):
                    if validate_left <= 0:
                        break
                    validate_left -= 1
                    validated += 1
                    errors = dciodvfy_errors(Path(written))
                    if errors:
                        invalid += 1
                        invalid_dir.mkdir(exist_ok=True)
                        kept = invalid_dir / f"case-{index:05d}-{Path(written).name}"
                        shutil.copy(written, kept)
                        if len(invalid_examples) < 20:
                            invalid_examples.append(
                                {
                                    "case": index,
                                    "kind": f"{case.family}:{case.kind}",
                                    "file": str(kept),
                                    "errors": errors[:5],
                                }
                            )
            done += len(batch)
            say(
                f"analysis: {done}/{len(indexes)} in {time.monotonic() - began:.0f} s; "
                f"{dict(answers.most_common(6))}; outputs invalid {invalid}/{validated}"
            )
        shutil.rmtree(folder, ignore_errors=True)
        analysed = answers.pop("analysed", 0)
        self.report["analysis"] = {
            "cases": len(indexes),
            "answered": done - len(unanswered),
            "not_played": len(indexes) - done,
            "seconds": round(time.monotonic() - began, 1),
            "batches": -(-done // self.args.batch),
            "batch_failures": batch_failures,
            "analysed": analysed,
            "refused_by_reason": dict(
                sorted(
                    (k, v) for k, v in answers.items() if k not in ("INTERNAL_ERROR", "NO ANSWER")
                )
            ),
            "internal_errors": answers.get("INTERNAL_ERROR", 0),
            "internal_error_cases": internal[:50],
            "unanswered": unanswered[:50],
            "by_family": {k: dict(v.most_common()) for k, v in sorted(by_family.items())},
        }
        self.report["outputs"] = {
            "validated": validated,
            "invalid": invalid,
            "invalid_examples": invalid_examples,
            "validator": "dciodvfy: a file with a line starting 'Error' is invalid",
        }

    def _analyze(
        self, files: list[str], out: Path, timeout: float | None = None
    ) -> tuple[dict[str, dict[str, Any]], str | None]:
        """``cxr-node analyze --json --out`` on ``files``: each file's report, and what went
        wrong with the call (None when every file got an entry)."""
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        limit = timeout or self.args.analyze_timeout
        command = [*self._cxr_node(), "analyze", "--json", "--out", str(out)]
        command += ["--config", str(self.config), "--log-level", "WARNING", *files]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=limit,
                env=self._env(),
                cwd=REPO,
            )
        except subprocess.TimeoutExpired:
            return {}, f"timed out after {limit:.0f} s"
        with (self.work / "logs" / "analyze.log").open("a") as log:
            log.write(done.stderr)
        try:
            parsed = json.loads(done.stdout)
        except json.JSONDecodeError:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            return {}, f"exit {done.returncode}, no JSON: {tail[0][:200]}"
        entries = [parsed] if isinstance(parsed, dict) else list(parsed)
        reports = {str(e.get("file")): e for e in entries if isinstance(e, dict)}
        missing = [f for f in files if f not in reports]
        if missing:
            return reports, f"exit {done.returncode}, {len(missing)} files without an entry"
        return reports, None

    # --- the verdict ----------------------------------------------------------------------

    def verdict(self) -> dict[str, Any]:
        network = self.report.get("network", {})
        serve = self.report.get("serve", {})
        log = self.report.get("serve_log", {})
        analysis = self.report.get("analysis", {})
        outputs = self.report.get("outputs", {})
        peak = serve.get("rss_mb", {}).get("peak")
        crashes = {
            "serve_exited": int(serve.get("alive_after_cases") is False),
            "serve_unhandled_exceptions": log.get("unhandled_exceptions", 0),
            "analysis_internal_errors": analysis.get("internal_errors", 0),
            "analysis_unanswered": len(analysis.get("unanswered", [])),
        }
        lockouts = network.get("echo", {}).get("failed", 0)
        verdict = {
            "crashes": sum(crashes.values()),
            "crashes_by_kind": crashes,
            "hangs": network.get("hangs", 0),
            "invalid_outputs": outputs.get("invalid", 0)
            + self.report.get("spool_results", {}).get("invalid", 0),
            "lockouts": lockouts,
            "violations": sum(network.get("violations", {}).values()),
            "serve_peak_mb": peak,
            # no network cases, no serve: nothing to measure there
            "serve_under_300_mb": peak < 300 if peak is not None else not serve,
            "spool_tmp_leftovers": serve.get("spool_tmp_leftovers"),
            "log_injection": log.get("forged_lines", 0)
            + log.get("lines_with_control_characters", 0),
        }
        verdict["passed"] = (
            verdict["crashes"] == 0
            and verdict["hangs"] == 0
            and verdict["invalid_outputs"] == 0
            and lockouts == 0
            and verdict["violations"] == 0
            and bool(verdict["serve_under_300_mb"])
            and not verdict["spool_tmp_leftovers"]
            and verdict["log_injection"] == 0
        )
        return verdict

    def run(self) -> dict[str, Any]:
        self.report = {
            "seed": self.args.seed,
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()
            },
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
            "commit": _commit(),
            "work_dir": str(self.work),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        try:
            if self.args.network_cases > 0 or self.args.only:
                self.start_node()
                try:
                    self.network()
                finally:
                    self.stop_node()
                    self.report.setdefault("serve", {})["exit_code_at_stop"] = self.serve_exit
                    self.report["serve_log"] = self.serve_log()
            if self.args.analysis_cases > 0 or self.args.only_analysis:
                if "serve" not in self.processes:
                    self._models_only()
                self.analysis()
        finally:
            for process in self.processes.values():
                process.stop(grace=10, retire=True)
        self.report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.report["verdict"] = self.verdict()
        return self.report

    def _models_only(self) -> None:
        """Models and a configuration for ``analyze`` when no node was started."""
        data = self.work / "node"
        (self.work / "logs").mkdir(parents=True, exist_ok=True)  # analyze.log goes there
        subprocess.run(
            [*self._cxr_node(), "models", "init-demo", "--if-none", "--data-dir", str(data)],
            check=True,
            capture_output=True,
            env=self._env(),
            cwd=REPO,
            timeout=300,
        )
        self.config = self.work / "node.yaml"
        self.config.write_text(yaml.safe_dump({"data_dir": str(data)}))


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (a line of its own when it cannot run)."""
    try:
        done = subprocess.run(
            [DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, errors="replace"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"Error - dciodvfy did not run ({type(exc).__name__})"]
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + local changes' if dirty else ''}"


def dump(args: argparse.Namespace, corpus: Path) -> int:
    """Write the files of the selected cases (a reproducer), play nothing."""
    target = Path(args.dump)
    target.mkdir(parents=True, exist_ok=True)
    cases = {c.index: c for c in fn.plan(args.network_cases, args.seed)}
    settings = fn.Settings(port=0, corpus=corpus, seed=args.seed, work=target)
    for index in parse_indexes(args.only) or []:
        case = cases[index]
        if case.family in ("structure", "bytes", "deflate"):
            kind, data = fn.store_payload(case, settings)
            path = target / f"network-{index:05d}-{case.family}.dcm"
            path.write_bytes(data)
            print(f"{path}: {case.family}: {kind}")
        else:
            print(f"network case {index}: {case.family} (played by tests/fuzz_network.py)")
    for index in parse_indexes(args.only_analysis) or []:
        made = fz.analysis_file(corpus, args.seed, index)
        path = target / f"analysis-{index:05d}-{made.family}.dcm"
        path.write_bytes(made.data)
        print(f"{path}: {made.family}: {made.kind}")
    return 0


def print_summary(report: dict[str, Any]) -> None:
    network = report.get("network")
    rows: list[tuple[str, str]] = []
    if network:
        store = network["c_store"]
        rows += [
            (
                "network cases played",
                f"{network['played']} of {network['cases']} in {network['seconds']} s",
            ),
            (
                "C-STORE requests",
                f"{store['requests']} (answer median {store['answer_seconds']['median']} s, "
                f"max {store['answer_seconds']['max']} s; {store['answers_over_5_s']} over 5 s)",
            ),
            ("  acknowledged (0x0000)", str(store["acknowledged"])),
            ("  refused by status", _counts(store["refused_by_status"])),
            ("  no status", _counts(store["without_status"])),
            ("hangs (no answer in time)", str(network["hangs"])),
            ("expectation violations", _counts(network["violations"])),
            (
                "C-ECHO probes",
                f"{network['echo']['probes']}, failed {network['echo']['failed']}"
                + (
                    f" ({_counts(network['echo']['failed_by_result'])})"
                    if network["echo"]["failed"]
                    else ""
                ),
            ),
        ]
        for family, results in network["by_family"].items():
            if family.startswith("pdu:"):
                rows.append((f"  {family}", _counts(results)))
    serve = report.get("serve")
    if serve:
        rss = serve["rss_mb"]
        rows += [
            (
                "serve RSS MB baseline/peak/final",
                f"{rss['baseline']} / {rss['peak']} / {rss['final']}",
            ),
            (
                "serve threads peak/final",
                f"{serve['threads']['peak']} / {serve['threads']['final']}",
            ),
            (
                "serve fds baseline/final",
                f"{serve['fds']['baseline'].get('total')} / {serve['fds']['final'].get('total')}",
            ),
            ("spool/.tmp leftovers", str(serve["spool_tmp_leftovers"])),
        ]
    log = report.get("serve_log")
    if log:
        rows.append(
            (
                "serve log",
                f"{log['unhandled_exceptions']} unhandled exceptions "
                f"({log['threads_died']} threads died), {log['tracebacks']} tracebacks, "
                f"{log['forged_lines']} forged lines, {log['lines_with_control_characters']} "
                f"lines with control characters, longest line {log['longest_line']}",
            )
        )
    analysis = report.get("analysis")
    if analysis:
        rows += [
            (
                "analysis cases answered",
                f"{analysis['answered']} of {analysis['cases']} in {analysis['seconds']} s, "
                f"{len(analysis['batch_failures'])} failed batches",
            ),
            ("  analysed", str(analysis["analysed"])),
            ("  refused by reason", _counts(analysis["refused_by_reason"])),
            ("  INTERNAL_ERROR", str(analysis["internal_errors"])),
        ]
        outputs = report["outputs"]
        rows.append(("SR/SC validated / invalid", f"{outputs['validated']} / {outputs['invalid']}"))
    spool = report.get("spool_results")
    if spool:
        rows.append(
            ("spool SR/SC validated / invalid", f"{spool['validated']} / {spool['invalid']}")
        )
    verdict = report.get("verdict", {})
    rows.append(
        (
            "VERDICT",
            f"{'PASS' if verdict.get('passed') else 'FAIL'}: crashes {verdict.get('crashes')}, "
            f"hangs {verdict.get('hangs')}, invalid outputs {verdict.get('invalid_outputs')}, "
            f"lockouts {verdict.get('lockouts')}, violations {verdict.get('violations')}, "
            f"log injection {verdict.get('log_injection')}, spool/.tmp leftovers "
            f"{verdict.get('spool_tmp_leftovers')}, serve peak {verdict.get('serve_peak_mb')} MB",
        )
    )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--network-cases", type=int, default=10_000)
    parser.add_argument("--analysis-cases", type=int, default=1_000)
    parser.add_argument("--out", type=Path, help="write the counts here (JSON)")
    parser.add_argument("--queue", choices=["redis", "embedded"], default="redis")
    parser.add_argument("--echo-every", type=int, default=50)
    parser.add_argument("--echo-limit", type=float, default=5.0, help="seconds")
    parser.add_argument("--dimse-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--batch", type=int, default=50, help="files per cxr-node analyze")
    parser.add_argument("--analyze-timeout", type=float, default=1800.0, help="seconds a batch")
    parser.add_argument("--validate", type=int, help="check at most this many SR/SC (all)")
    parser.add_argument("--max-minutes", type=float, default=240.0, help="per phase")
    parser.add_argument("--only", help="network cases to play, e.g. 12,40-45")
    parser.add_argument("--only-analysis", help="analysis cases to run, e.g. 3,7")
    parser.add_argument("--dump", help="write the --only/--only-analysis cases' files here")
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    parser.add_argument("--corpus", type=Path)
    args = parser.parse_args(argv)
    corpus = (
        args.corpus or Path(os.environ.get("CXR_CORPUS", REPO.parent / "shared/cxr-corpus"))
    ).resolve()
    if not (corpus / fz.BASES[0]).is_file():
        parser.error(f"no corpus at {corpus} (set CXR_CORPUS or --corpus)")
    warnings.simplefilter("ignore")  # pydicom complains about what we break on purpose
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    if args.dump:
        return dump(args, corpus)
    if not Path(DCIODVFY).exists() and args.analysis_cases:
        parser.error(f"{DCIODVFY} is missing (Debian package dicom3tools)")
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="cxr-fuzz-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}")
    campaign = Campaign(args, work, corpus)
    report = campaign.run()
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    with contextlib.suppress(OSError):
        (work / "report.json").write_text(text)
    print_summary(report)
    if args.keep_work:
        say(f"everything is in {work}")
    elif args.work_dir is None and report["verdict"]["passed"]:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for bulky in ("node", "sending", "analysis", "redis"):  # thousands of stored images
            shutil.rmtree(work / bulky, ignore_errors=True)
        say(f"logs, cases.jsonl, report.json and invalid outputs are in {work}")
    return 0 if report["verdict"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
