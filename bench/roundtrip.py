"""Round trip and memory of one cxr-node on this machine, with real peers.

1. Latency: DCMTK storescu -> ``cxr-node serve`` (embedded queue) -> DCMTK storescp; from the
   start of the C-STORE to both SR and SC stored at the destination, models warm.
2. Memory: resident size of ``serve`` in Redis mode (no worker inside it), idle and after
   receiving studies, and whether torch is mapped into it.

Each study is a copy of a corpus chest radiograph with fresh Study/Series/SOP UIDs (written to a
temp folder, never into the repository). Usage:

    CXR_CORPUS=../shared/cxr-corpus .venv/bin/python bench/roundtrip.py [--studies 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = "dwv/gdcm-CR-MONO1-10-chest.dcm"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(port)


def make_copies(source: Path, count: int, folder: Path) -> list[Path]:
    """``count`` copies of one image, each its own study."""
    dataset = pydicom.dcmread(source)
    paths = []
    for index in range(count):
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = folder / f"study{index:03d}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def start_serve(
    data_dir: Path, port: int, env: dict[str, str], log: Path, *options: str
) -> subprocess.Popen[bytes]:
    """``cxr-node serve`` on loopback with its own data folder, logging to ``log``."""
    arguments = [
        sys.executable,
        "-m",
        "cxr_node",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--bind-address",
        "127.0.0.1",
        *options,
    ]
    with log.open("ab") as stream:
        return subprocess.Popen(arguments, cwd=REPO, env=env, stdout=stream, stderr=stream)


STORESCU_OPTIONS: list[str] = []


def storescu(port: int, path: Path) -> None:
    subprocess.run(
        [
            "/usr/bin/storescu",
            "-aec",
            "CXR_NODE",
            *STORESCU_OPTIONS,
            "127.0.0.1",
            str(port),
            str(path),
        ],
        check=True,
        capture_output=True,
    )


def latency(work: Path, copies: list[Path], quiet: float, env: dict[str, str]) -> list[float]:
    received = work / f"received-{quiet}"
    received.mkdir()
    dest_port, node_port = free_port(), free_port()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "DEST", "-od", str(received), str(dest_port)]
    )
    node = start_serve(
        work / f"n{quiet}",
        node_port,
        env,
        work / "serve.log",
        "--quiet-seconds",
        str(quiet),
        "--destination",
        f"DEST@127.0.0.1:{dest_port}",
    )
    try:
        wait_port(dest_port)
        wait_port(node_port)
        times = []
        for index, path in enumerate(copies):
            expected = 2 * (index + 1)
            began = time.monotonic()
            storescu(node_port, path)
            while len(list(received.iterdir())) < expected:
                if time.monotonic() - began > 120:
                    raise TimeoutError(f"study {index} not back in 120 s; see {work}/serve.log")
                time.sleep(0.01)
            times.append(time.monotonic() - began)
        for worker in children(node.pid):
            print(f"  embedded worker RSS after {len(copies)} studies: {rss_mb(worker):.0f} MB")
        return times[1:]  # the first study warms the worker's models
    finally:
        node.terminate()
        node.wait(30)
        scp.terminate()


def serve_memory(work: Path, copies: list[Path], env: dict[str, str]) -> tuple[float, float, bool]:
    redis_port, node_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_port(redis_port)
    node = start_serve(
        work / "redis",
        node_port,
        env,
        work / "serve-redis.log",
        "--broker",
        f"redis://127.0.0.1:{redis_port}/0",
    )
    try:
        wait_port(node_port)
        time.sleep(2)
        idle = rss_mb(node.pid)
        for path in copies:
            storescu(node_port, path)
        time.sleep(3)
        busy = rss_mb(node.pid)
        torch_loaded = "libtorch" in Path(f"/proc/{node.pid}/maps").read_text()
        return idle, busy, torch_loaded
    finally:
        node.terminate()
        node.wait(30)
        redis.terminate()


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"n={len(values)} median={statistics.median(values):.2f}s p95={p95:.2f}s "
        f"min={ordered[0]:.2f}s max={ordered[-1]:.2f}s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="corpus-relative path")
    parser.add_argument(
        "--storescu-option",
        action="append",
        default=[],
        help="extra storescu option, e.g. -xw to propose JPEG 2000 (lossy)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    STORESCU_OPTIONS.extend(args.storescu_option)
    corpus = Path(os.environ.get("CXR_CORPUS", "../shared/cxr-corpus")).resolve()
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as temp:
        work = Path(temp)
        models = work / "models-root"
        env = dict(os.environ, CXR_NODE_MODELS_DIR=str(models / "models"))
        subprocess.run(
            [sys.executable, "-m", "cxr_node", "models", "init-demo", "--data-dir", str(models)],
            check=True,
            env=env,
            capture_output=True,
        )
        copies = make_copies(corpus / args.image, args.studies + 1, work)
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}"
        )
        print(f"image: {args.image}")
        for quiet in (2.0, 0.2):
            times = latency(work, copies, quiet, env)
            print(f"round trip, embedded queue, quiet period {quiet:.1f}s: {describe(times)}")
        if args.skip_memory:
            return 0
        (work / "memory").mkdir()
        more = make_copies(corpus / args.image, 10, work / "memory")
        idle, busy, torch_loaded = serve_memory(work, more, env)
        print(
            f"serve RSS in Redis mode: idle {idle:.0f} MB, after 10 studies {busy:.0f} MB, "
            f"torch loaded: {torch_loaded}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
