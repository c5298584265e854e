"""Latency and throughput of the whole pipeline, against the model's own speed in the same run.

1. Latency: one study at a time, DCMTK ``storescu`` -> ``cxr-node serve`` (embedded queue, the
   quick-start default) -> DCMTK ``storescp``; from the start of the C-STORE until both the SR
   and the SC are stored at the destination. The first study warms the models and is not counted.
2. Throughput: ``--throughput`` studies sent as fast as possible (one ``storescu`` over one
   association, each file its own study); studies per minute from the start of sending until
   the last SR + SC pair is stored, and over the middle 80 % of deliveries (sustained rate).
3. Model-only: the same ensemble in a fresh process, on the same image preprocessed once:
   forward pass and Grad-CAM for the same findings the worker explains (every positive and the
   top ``gradcam_top_k``): batch of one as one stream with every core and as one stream per
   core with a thread each, and batches of 4 and 8 with every core (one forward pass per
   member for the batch, Grad-CAM per image); the fastest is the reference. Measured before
   and after the pipeline runs, in the same run.

Each study is a copy of a corpus chest radiograph with fresh UIDs, in a temp folder (never in the
repository). Usage:

    CXR_CORPUS=../shared/cxr-corpus .venv/bin/python bench/pipeline.py \
        [--latency 50] [--throughput 200] [--image dwv/gdcm-CR-MONO1-10-chest.dcm]
        [--storescu-option -xw]   (JPEG 2000 lossy images: storescu proposes it)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from roundtrip import (
    STORESCU_OPTIONS,
    children,
    free_port,
    make_copies,
    rss_mb,
    start_serve,
    storescu,
    wait_port,
)

DEFAULT_IMAGE = "dwv/gdcm-CR-MONO1-10-chest.dcm"
SYNTHETIC_FULL_SIZE = "synthetic-full-size"
"""``--image`` value for a synthetic 2500x2048 16-bit DX (10 MB uncompressed), made here."""


def synthetic_full_size(folder: Path) -> Path:
    """A full-size synthetic chest DX (the corpus has no full-size uncompressed one)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.unit._synthetic import make_dx_chest

    path = folder / "synthetic-dx-2500x2048.dcm"
    make_dx_chest(2500, 2048).save_as(path, enforce_file_format=True)
    return path


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Destination:
    """A DCMTK storescp writing into a folder; counts what has arrived."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        self.port = free_port()
        self.process = subprocess.Popen(
            ["/usr/bin/storescp", "-aet", "DEST", "-od", str(folder), str(self.port)]
        )
        wait_port(self.port)

    def count(self) -> int:
        return sum(1 for _ in self.folder.iterdir())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Node:
    """``cxr-node serve`` with its embedded workers, sending results to a destination."""

    def __init__(self, work: Path, env: dict[str, str], destination: Destination) -> None:
        self.port = free_port()
        self.log = work / "serve.log"
        self.process = start_serve(
            work / "node",
            self.port,
            env,
            self.log,
            "--destination",
            f"DEST@127.0.0.1:{destination.port}",
        )
        wait_port(self.port)

    def processes(self) -> dict[str, int]:
        found = {"serve": self.process.pid}
        for pid in children(self.process.pid):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            role = "analysis" if "analysis" in command else "delivery"
            found[f"{role} worker"] = pid
        return found

    def rss(self) -> dict[str, float]:
        return {name: rss_mb(pid) for name, pid in self.processes().items()}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of this process's children that have been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def idle_cpu(work: Path, warmup: Path, env: dict[str, str], seconds: float) -> dict[str, float]:
    """CPU of each node process (per cent of one core) while idle, after one study."""
    destination = Destination(work / "idle-received")
    node = Node(work / "idle", env, destination)
    try:
        storescu(node.port, warmup)
        wait_count(destination, 2, 120, node.log)
        time.sleep(2)  # the study's own tail (delivery bookkeeping) is over
        watched = node.processes()
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        time.sleep(seconds)
        return {
            name: 100 * (cpu_seconds(pid) - before[name]) / seconds for name, pid in watched.items()
        }
    finally:
        node.stop()
        destination.stop()


def wait_count(destination: Destination, expected: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while destination.count() < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{destination.count()} of {expected} objects; see {log}")
        time.sleep(0.005)


def latency(
    work: Path, copies: list[Path], env: dict[str, str]
) -> tuple[list[float], dict[str, float]]:
    destination = Destination(work / "latency-received")
    node = Node(work / "latency", env, destination)
    try:
        times = []
        for index, path in enumerate(copies):
            began = time.monotonic()
            storescu(node.port, path)
            wait_count(destination, 2 * (index + 1), 120, node.log)
            times.append(time.monotonic() - began)
        return times[1:], node.rss()
    finally:
        node.stop()
        destination.stop()


def throughput(
    work: Path, warmup: Path, copies: list[Path], env: dict[str, str]
) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """Seconds until all studies are back, sustained studies per minute, peak RSS and CPU
    seconds by process."""
    destination = Destination(work / "throughput-received")
    node = Node(work / "throughput", env, destination)
    peak = {"serve": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            for name, size in node.rss().items():
                peak[name] = max(peak.get(name, 0.0), size)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        storescu(node.port, warmup)  # models warm, as in production
        wait_count(destination, 2, 120, node.log)
        sampler.start()
        watched = node.processes() | {"destination storescp": destination.process.pid}
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        arrivals: list[float] = []
        children_before = children_cpu()
        began = time.monotonic()
        sender = subprocess.Popen(
            ["/usr/bin/storescu", "-aec", "CXR_NODE", *STORESCU_OPTIONS]
            + ["127.0.0.1", str(node.port)]
            + [str(p) for p in copies],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen = 2
        deadline = began + 60 + 10 * len(copies)
        while seen < 2 + 2 * len(copies):
            now_count = destination.count()
            while seen < now_count:
                seen += 1
                if seen % 2 == 0:  # a study's SR + SC pair is complete
                    arrivals.append(time.monotonic() - began)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{seen - 2} of {2 * len(copies)} objects; see {node.log}")
            time.sleep(0.02)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
        if sender.wait(60) != 0:
            raise RuntimeError("storescu failed")
        cpu["sender storescu"] = children_cpu() - children_before  # reaped just now
        total = arrivals[-1]
        first, last = round(0.1 * len(arrivals)), round(0.9 * len(arrivals)) - 1
        sustained = 60 * (last - first) / (arrivals[last] - arrivals[first])
        return total, sustained, peak, cpu
    finally:
        done.set()
        node.stop()
        destination.stop()


def model_only(image: Path, env: dict[str, str], repeats: int) -> dict[str, float]:
    """Images per minute of the bare ensemble, in a fresh process, by configuration."""
    output = subprocess.run(
        [sys.executable, __file__, "--model-only-worker", str(image), "--repeats", str(repeats)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: float(v) for k, v in json.loads(output.strip().splitlines()[-1]).items()}


def model_only_worker(image: Path, repeats: int) -> None:
    """Run in the child: forward + Grad-CAM on one preprocessed image, batch of one, as one
    stream with every core, and as concurrent streams with a core each; the best is the
    reference the pipeline is held to."""
    import torch
    from pydicom import dcmread

    from cxr_node.settings import load_settings
    from workers import pixels, scoring
    from workers.analysis import Analyzer
    from workers.ensemble import Inference

    settings = load_settings(data_dir=Path(os.environ["CXR_BENCH_DATA_DIR"]))
    analyzer = Analyzer(settings)
    displayed = pixels.displayed_image(dcmread(image), settings.eligibility.min_grey_levels)
    batch, _box = analyzer.model_input(displayed)

    def one() -> None:
        explain(analyzer.ensemble.infer(batch))

    def explain(inference: Inference) -> None:
        ranked = sorted(
            inference.predictions,
            key=lambda p: scoring.normalised_probability(p.probability, p.threshold),
            reverse=True,
        )
        positives = [p.label for p in ranked if p.positive]
        explained = list(dict.fromkeys(positives + [p.label for p in ranked[: analyzer.top_k]]))
        analyzer.ensemble.gradcam(inference, explained)

    def batched(size: int) -> float:
        torch.set_num_threads(os.cpu_count() or 1)
        images = torch.cat([batch] * size)
        rounds = max(1, repeats // size)

        def once() -> None:
            for inference in analyzer.ensemble.infer_many(images):
                explain(inference)

        once()
        began = time.perf_counter()
        for _ in range(rounds):
            once()
        return 60 * size * rounds / (time.perf_counter() - began)

    def streams(count: int, threads: int) -> float:
        torch.set_num_threads(threads)
        for _ in range(3):
            one()
        workers = [
            threading.Thread(target=lambda: [one() for _ in range(repeats // count)])
            for _ in range(count)
        ]
        began = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return 60 * count * (repeats // count) / (time.perf_counter() - began)

    cores = os.cpu_count() or 1
    rates = {f"1 stream x {cores} threads": streams(1, cores)}
    if cores > 1:
        rates[f"{cores} streams x 1 thread"] = streams(cores, 1)
    for size in (4, 8):
        rates[f"batches of {size} x {cores} threads"] = batched(size)
    print(json.dumps(rates))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=int, default=50, help="studies timed one at a time")
    parser.add_argument("--throughput", type=int, default=200, help="studies sent at once")
    parser.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help=f"corpus-relative path, or {SYNTHETIC_FULL_SIZE} (a 2500x2048 16-bit DX made here)",
    )
    parser.add_argument("--repeats", type=int, default=200, help="model-only forward passes")
    parser.add_argument("--idle", type=float, default=0, help="seconds of idle CPU measured")
    parser.add_argument(
        "--storescu-option",
        action="append",
        default=[],
        help="extra storescu option, e.g. -xw to propose JPEG 2000 (lossy)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the temp folder (logs)")
    parser.add_argument("--model-only-worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_only_worker:
        model_only_worker(args.model_only_worker, args.repeats)
        return 0
    STORESCU_OPTIONS.extend(args.storescu_option)
    corpus = Path(os.environ.get("CXR_CORPUS", "../shared/cxr-corpus")).resolve()
    temp = tempfile.mkdtemp(prefix="cxr-bench-")
    failed = True
    try:
        work = Path(temp)
        models = work / "models-root"
        env = dict(
            os.environ, CXR_NODE_MODELS_DIR=str(models / "models"), CXR_BENCH_DATA_DIR=str(models)
        )
        subprocess.run(
            [sys.executable, "-m", "cxr_node", "models", "init-demo", "--data-dir", str(models)],
            check=True,
            env=env,
            capture_output=True,
        )
        source = (
            synthetic_full_size(work) if args.image == SYNTHETIC_FULL_SIZE else corpus / args.image
        )
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
            f"python {platform.python_version()}; image {args.image}"
        )
        before = model_only(source, env, args.repeats)
        print("model-only before: " + ", ".join(f"{k} {v:.0f}/min" for k, v in before.items()))
        if args.latency:
            (work / "latency").mkdir()
            copies = make_copies(source, args.latency + 1, work / "latency")
            times, sizes = latency(work, copies, env)
            print(
                f"latency, one study at a time (n={len(times)}): "
                f"p50 {statistics.median(times):.2f} s, p95 {percentile(times, 0.95):.2f} s, "
                f"max {max(times):.2f} s (targets p50 <= 1.0 s, p95 <= 1.5 s)"
            )
            print("  resident after: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sizes.items()))
        if args.idle:
            (work / "idle").mkdir()
            warmup = make_copies(source, 1, work / "idle")[0]
            idle = idle_cpu(work, warmup, env, args.idle)
            print(
                f"idle for {args.idle:.0f} s after one study: "
                + ", ".join(f"{k} {v:.1f} % of a core" for k, v in idle.items())
            )
        if args.throughput:
            (work / "throughput").mkdir()
            copies = make_copies(source, args.throughput + 1, work / "throughput")
            total, sustained, peak, cpu = throughput(work, copies[0], copies[1:], env)
            after = model_only(source, env, args.repeats)
            print("model-only after: " + ", ".join(f"{k} {v:.0f}/min" for k, v in after.items()))
            best = max(statistics.mean([before[k], after[k]]) for k in before)
            overall = 60 * args.throughput / total
            print(
                f"throughput, {args.throughput} studies: all done in {total:.1f} s = "
                f"{overall:.0f} studies/min; sustained (middle 80 %) {sustained:.0f} studies/min"
            )
            print(
                f"  against the best model-only configuration ({best:.0f}/min, mean of before "
                f"and after): overall {overall / best:.2f}, sustained {sustained / best:.2f} "
                f"(target >= 0.8)"
            )
            print("  peak resident: " + ", ".join(f"{k} {v:.0f} MB" for k, v in peak.items()))
            print(
                "  CPU per study: "
                + ", ".join(f"{k} {1000 * v / args.throughput:.0f} ms" for k, v in cpu.items())
                + f" (of {1000 * total * (os.cpu_count() or 1) / args.throughput:.0f} core-ms)"
            )
        failed = False
    finally:
        if args.keep_work or failed:
            print(f"work folder kept: {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
