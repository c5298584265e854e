"""Ingest throughput: one association of large DX images into cxr-node and two reference SCPs.

DCMTK ``storescu`` sends N synthetic 2500x2048 16-bit DX images (about 10 MB each, BitsStored
12) over ONE association to each receiver in turn:

* ``cxr-node serve`` in Redis mode (no worker inside it, so ingest is measured alone); it fsyncs
  every instance to its spool and writes its ledger before answering Success;
* DCMTK ``storescp -od DIR`` (writes to disk, no fsync);
* pynetdicom's bundled ``storescp`` app with ``-od DIR`` (writes to disk, no fsync).

Receivers alternate in a rotating order each round; the receiver's start-up, the count of what
it stored and the clean-up are not timed, only the ``storescu`` run. The images are generated
once into a temp folder (never into the repository) and the same files go to every receiver.
Target: cxr-node at most 1.0x DCMTK's median wall time and at most 1.2x pynetdicom's. Usage:

    .venv/bin/python bench/ingest.py [--rounds 5] [--images 40] [--only cxr-node dcmtk]
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
ROWS, COLUMNS, BITS_STORED = 2500, 2048, 12
RECEIVERS = ("cxr-node", "dcmtk", "pynetdicom")
TARGETS = {"dcmtk": 1.0, "pynetdicom": 1.2}  # cxr-node median / reference median, at most


# --- small helpers (the same as bench/roundtrip.py's) -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Return once ``port`` accepts on loopback; fail at once if ``process`` has died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# --- the images ---------------------------------------------------------------------------------


def make_images(count: int, folder: Path, seed: int = 20240611) -> list[Path]:
    """``count`` DX For Presentation instances, each its own study, Explicit VR Little Endian."""
    rng = np.random.default_rng(seed)
    y = np.linspace(-1.0, 1.0, ROWS, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, COLUMNS, dtype=np.float32)[None, :]
    # A smooth field: vertical gradient, a bright mediastinum-like band, darker "lung" lobes.
    base = 1800 + 700 * y + 900 * np.exp(-((x / 0.18) ** 2))
    for centre in (-0.45, 0.45):
        base -= 700 * np.exp(-(((x - centre) / 0.3) ** 2 + ((y + 0.05) / 0.6) ** 2))
    base += 120 * np.sin(9 * y) * np.cos(5 * x)
    maximum = (1 << BITS_STORED) - 1
    now = time.localtime()
    paths = []
    for index in range(count):
        noisy = base + rng.normal(0.0, 60.0, size=base.shape).astype(np.float32)
        noisy += float(rng.uniform(-150, 150))
        pixels = np.clip(noisy, 0, maximum).astype("<u2")
        path = folder / f"dx{index:03d}.dcm"
        _dx_dataset(index, pixels, now).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _dx_dataset(index: int, pixels: np.ndarray, now: time.struct_time) -> Dataset:
    date, clock = time.strftime("%Y%m%d", now), time.strftime("%H%M%S", now)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    # Patient
    ds.PatientName = "BENCH^INGEST"
    ds.PatientID = f"BENCH{index:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    # General Study
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = clock
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{index + 1}"
    ds.AccessionNumber = f"BENCH{index:06d}"
    ds.StudyDescription = "BENCH INGEST CHEST PA"
    # General / DX Series
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    # General Equipment
    ds.Manufacturer = "cxr-node bench"
    ds.InstitutionName = "BENCH"
    # General Image, DX Anatomy Imaged, DX Positioning
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.ViewPosition = "PA"
    ds.BurnedInAnnotation = "NO"
    # Image Pixel and DX Image
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    # DX Detector
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [0.168, 0.168]
    ds.PixelSpacing = [0.168, 0.168]
    ds.KVP = 125
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


# --- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    receiver: str
    seconds: float
    stored: int
    idle_mb: float
    peak_mb: float
    after_mb: float


@dataclass
class Bench:
    work: Path
    images: list[Path]
    env: dict[str, str]
    node_max_pdu: int | None = None
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, arguments: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as stream:
            process = subprocess.Popen(
                arguments, cwd=REPO, env=env or self.env, stdout=stream, stderr=stream
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop(process)
        self.started.clear()

    def run(self, receiver: str) -> Run:
        runner: Callable[[], Run] = {
            "cxr-node": self.run_cxr_node,
            "dcmtk": self.run_dcmtk,
            "pynetdicom": self.run_pynetdicom,
        }[receiver]
        try:
            return runner()
        finally:
            os.sync()  # flush what was written now, not during the next receiver's run

    def run_dcmtk(self) -> Run:
        return self.run_reference(
            "dcmtk", lambda out, port: [STORESCP, "-aet", "DEST", "-od", out, port]
        )

    def run_pynetdicom(self) -> Run:
        return self.run_reference(
            "pynetdicom",
            lambda out, port: [
                sys.executable,
                "-m",
                "pynetdicom",
                "storescp",
                port,
                "-aet",
                "DEST",
                "-od",
                out,
            ],
        )

    def run_reference(self, name: str, command: Callable[[str, str], list[str]]) -> Run:
        """A reference ``storescp`` writing into its own folder (emptied afterwards)."""
        out, port = self.work / f"{name}-out", free_port()
        out.mkdir()
        scp = self.spawn(command(str(out), str(port)), self.work / f"{name}.log")
        try:
            seconds, idle, peak, after = self.transfer(scp, port, "DEST")
            stop(scp)
            return Run(name, seconds, count_files(out), idle, peak, after)
        finally:
            self.stop_all()
            shutil.rmtree(out, ignore_errors=True)

    def run_cxr_node(self) -> Run:
        data, redis_port, port = self.work / "cxr-node-data", free_port(), free_port()
        redis = self.spawn(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            self.work / "redis.log",
        )
        try:
            wait_port(redis_port, redis)
            serve = self.spawn(
                [
                    sys.executable,
                    "-m",
                    "cxr_node",
                    "serve",
                    "--data-dir",
                    str(data),
                    "--port",
                    str(port),
                    "--bind-address",
                    "127.0.0.1",
                    "--broker",
                    f"redis://127.0.0.1:{redis_port}/0",
                ],
                self.work / "serve.log",
                env=self.env
                if self.node_max_pdu is None
                else dict(self.env, CXR_NODE_MAX_PDU=str(self.node_max_pdu)),
            )
            seconds, idle, peak, after = self.transfer(serve, port, "CXR_NODE")
            stop(serve)
            spool = data / "spool"
            stored = sum(
                1 for p in spool.rglob("*.dcm") if ".tmp" not in p.relative_to(spool).parts
            )
            return Run("cxr-node", seconds, stored, idle, peak, after)
        finally:
            self.stop_all()
            shutil.rmtree(data, ignore_errors=True)

    def transfer(
        self, scp: subprocess.Popen[bytes], port: int, ae_title: str
    ) -> tuple[float, float, float, float]:
        """Time one storescu association; return seconds and the SCP's RSS idle/peak/after."""
        wait_port(port, scp)
        time.sleep(1.0)  # let it settle (untimed)
        idle = rss_mb(scp.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                value = rss_mb(scp.pid)
                if value == value:  # not NaN
                    peak[0] = max(peak[0], value)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        arguments = [STORESCU, "-aec", ae_title, "127.0.0.1", str(port)]
        began = time.perf_counter()
        result = subprocess.run(
            arguments + [str(p) for p in self.images], capture_output=True, text=True, timeout=600
        )
        seconds = time.perf_counter() - began
        done.set()
        sampler.join()
        if result.returncode != 0:
            raise RuntimeError(
                f"storescu exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        if result.stderr.strip():
            print(f"    storescu said: {result.stderr.strip()[:500]}")
        time.sleep(1.0)
        after = rss_mb(scp.pid)
        return seconds, idle, max(peak[0], after), after


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


# --- report -------------------------------------------------------------------------------------


def summary(runs: list[Run], megabytes: float) -> dict[str, float]:
    medians: dict[str, float] = {}
    print("\nper receiver (wall time of one storescu association):")
    for receiver in RECEIVERS:
        times = [r.seconds for r in runs if r.receiver == receiver]
        if not times:
            continue
        median = medians[receiver] = statistics.median(times)
        peaks = [r.peak_mb for r in runs if r.receiver == receiver]
        afters = [r.after_mb for r in runs if r.receiver == receiver]
        print(
            f"  {receiver:<11} n={len(times)} median={median:.2f}s min={min(times):.2f}s "
            f"max={max(times):.2f}s  {megabytes / median:.0f} MB/s  "
            f"RSS peak {max(peaks):.0f} MB, after {statistics.median(afters):.0f} MB"
        )
    return medians


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--only", nargs="+", choices=RECEIVERS, default=list(RECEIVERS))
    parser.add_argument("--keep-work", action="store_true", help="keep the temp folder")
    parser.add_argument(
        "--node-max-pdu",
        type=int,
        help="cxr-node's max_pdu (default: its setting, 262144); 16384 matches both references",
    )
    args = parser.parse_args()
    receivers = [r for r in RECEIVERS if r in args.only]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}, python "
        f"{platform.python_version()}, pynetdicom {pynetdicom.__version__}, "
        f"pydicom {pydicom.__version__}"
    )
    version = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout
    print(f"storescu: {version.splitlines()[0].strip('$ ') if version else '?'}")
    work = Path(tempfile.mkdtemp(prefix="cxr-ingest-"))
    bench: Bench | None = None
    try:
        models = work / "models-root"
        env = dict(os.environ, CXR_NODE_MODELS_DIR=str(models / "models"))
        if "cxr-node" in receivers:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cxr_node",
                    "models",
                    "init-demo",
                    "--data-dir",
                    str(models),
                ],
                check=True,
                env=env,
                capture_output=True,
            )
        (work / "images").mkdir()
        began = time.perf_counter()
        images = make_images(args.images, work / "images")
        megabytes = sum(p.stat().st_size for p in images) / 1e6
        print(
            f"images: {len(images)} DX For Presentation, {ROWS}x{COLUMNS}, 16 bits allocated, "
            f"{BITS_STORED} stored, Explicit VR LE, {megabytes:.0f} MB in all "
            f"({megabytes / len(images):.1f} MB each), made in "
            f"{time.perf_counter() - began:.1f}s under {work}"
        )
        os.sync()
        bench = Bench(work, images, env, node_max_pdu=args.node_max_pdu)
        runs: list[Run] = []
        for round_ in range(args.rounds):
            shift = round_ % len(receivers)
            for receiver in receivers[shift:] + receivers[:shift]:
                run = bench.run(receiver)
                runs.append(run)
                print(
                    f"round {round_ + 1} {receiver:<11} {run.seconds:6.2f}s "
                    f"{megabytes / run.seconds:5.0f} MB/s  stored {run.stored}  "
                    f"RSS idle {run.idle_mb:.0f} / peak {run.peak_mb:.0f} / "
                    f"after {run.after_mb:.0f} MB",
                    flush=True,
                )
                if run.stored != len(images):
                    raise SystemExit(
                        f"FAILED: {receiver} stored {run.stored} of {len(images)} images "
                        f"(logs in {work}; use --keep-work to keep them)"
                    )
        medians = summary(runs, megabytes)
        if "cxr-node" in medians:
            for reference, target in TARGETS.items():
                if reference in medians:
                    ratio = medians["cxr-node"] / medians[reference]
                    verdict = "MET" if ratio <= target else "MISSED"
                    print(
                        f"  cxr-node / {reference:<10} {ratio:.2f}x (target <= {target:.1f}x) "
                        f"{verdict}"
                    )
        print(f"load at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if bench is not None:
            bench.stop_all()
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
