"""The web app's speed and serve's memory with it (issue 13).

A ledger with ``--studies`` studies (made-up patients; a third critical, a third abnormal, a
third routine, analysed as the node records them) behind a real ``cxr-node serve`` with its web
server (embedded queue, no images). Then, over HTTP on loopback with a viewer's session:
``--requests`` timed requests each of the worklist page, the API's worklist (50 a page, first
and a middle page, and a text search), one study's page and API, ``/metrics``; and serve's
resident size before and after (VmRSS, and VmHWM, its peak).

    .venv/bin/python bench/web.py [--studies 1000] [--requests 200] [--json-out web.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_node.jobs import Priority  # noqa: E402
from cxr_node.ledger import Ledger  # noqa: E402
from cxr_node.web import credentials  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402
from tests.unit._studies import seed_study  # noqa: E402

PASSWORD = "benchmark password"
PRIORITIES = (Priority.CRITICAL, Priority.ABNORMAL, Priority.ROUTINE)


def seed(data: Path, count: int) -> list[str]:
    """``count`` analysed studies and a viewer; their keys."""
    ledger = Ledger(f"sqlite:///{data / 'ledger.sqlite'}")
    keys = []
    try:
        ledger.add_user("viewer", "viewer", credentials.hash_password(PASSWORD))
        for n in range(count):
            key = f"1.2.826.0.1.3680043.10.555.{n + 1}"
            seed_study(
                ledger,
                key,
                priority=PRIORITIES[n % 3],
                score=round((n % 97) / 100, 2),
                patient_name=f"BENCH^PATIENT{n:04d}",
                patient_id=f"PID{n:05d}",
                accession=f"ACC{n:06d}",
            )
            keys.append(key)
    finally:
        ledger.close()
    return keys


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            figures[name] = int(value.split()[0])
    return figures


def timed(client: httpx.Client, path: str, count: int) -> dict[str, float]:
    """Milliseconds per request: p50, p95, max."""
    seconds = []
    for _ in range(count):
        began = time.perf_counter()
        answer = client.get(path)
        seconds.append(time.perf_counter() - began)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: HTTP {answer.status_code}")
    ordered = sorted(seconds)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxr-web-bench-") as folder:
        data = Path(folder) / "node"
        data.mkdir()
        began = time.monotonic()
        keys = seed(data, args.studies)
        seeded = time.monotonic() - began
        dicom, http = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
        log = (Path(folder) / "serve.log").open("wb")
        serve = subprocess.Popen(
            [sys.executable, "-m", "cxr_node", "serve", "--data-dir", str(data),
             "--port", str(dicom), "--http-port", str(http), "--bind-address", "127.0.0.1"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_port(http, timeout=60)
            time.sleep(3.0)  # the embedded worker starts; serve settles
            before = rss_kib(serve.pid)
            report: dict[str, Any] = {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "python": platform.python_version(),
                "studies": args.studies,
                "requests_each": args.requests,
                "seeding_s": round(seeded, 1),
                "serve_rss_kib_before": before,
                "latency": {},
            }
            with httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30) as client:
                answer = client.post(
                    "/api/v1/session", json={"name": "viewer", "password": PASSWORD}
                )
                answer.raise_for_status()
                middle = (args.studies // 2) // 50 * 50
                paths = {
                    "worklist page (200 rows)": "/",
                    "API worklist, first 50": "/api/v1/studies?limit=50",
                    f"API worklist, 50 from {middle}": f"/api/v1/studies?limit=50&offset={middle}",
                    "API worklist, text search": "/api/v1/studies?q=PATIENT0500",
                    "study page": f"/studies/{keys[len(keys) // 2]}",
                    "API study": f"/api/v1/studies/{keys[len(keys) // 2]}",
                    "metrics": "/metrics",
                }
                for name, path in paths.items():
                    client.get(path)  # warm
                    report["latency"][name] = timed(client, path, args.requests)
                    print(f"{name:34s} {report['latency'][name]}", flush=True)
            report["serve_rss_kib_after"] = rss_kib(serve.pid)
            print(f"serve resident: before {before}, after {report['serve_rss_kib_after']} KiB")
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
            log.close()
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
