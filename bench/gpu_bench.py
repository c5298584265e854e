"""GPU figures for issue 16, in one process: model-only batched throughput, single-image latency
and throughput of the analysis (decode to encode) with dynamic batching, on full-size images.

Run by ``bench/gpu.sh`` on a GPU machine; runs on a CPU too (``--device cpu --quick``) so that
it is tested where no GPU is. Writes ``--out/gpu.json`` and prints a short summary.

- model-only: the two-member DenseNet-121 ensemble at 224 (forward pass and Grad-CAM maps),
  batches of 1, 8, 32 and 64, float32 and bf16 autocast, channels_last on CUDA;
- agreement: the largest probability difference between CUDA (float32, bf16) and the CPU;
- analysis, one image at a time: read, decode, display, infer, explain, score, SR + SC
  encoding, pictures (the worker's functions), synthetic 2500x2048 16-bit DX;
- analysis throughput: ``--images`` such images by ``--threads`` analysis threads sharing one
  InferenceBatcher (as an analysis worker on a GPU does), images per minute.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_node.settings import Settings  # noqa: E402
from cxr_node.spool import Spool  # noqa: E402
from tests.unit._synthetic import make_dx_chest  # noqa: E402
from workers import pipeline  # noqa: E402
from workers.analysis import Analyzer  # noqa: E402
from workers.bundles import write_demo_bundles  # noqa: E402
from workers.ensemble import Ensemble, LoadedMember  # noqa: E402


def model_only(analyzer: Analyzer, batch: int, bf16: bool, seconds: float) -> float:
    """Images per second of the ensemble (forward and Grad-CAM maps) at one batch size."""
    ensemble = analyzer.ensemble
    size = ensemble.preprocessing.size
    images = torch.rand(batch, 1, size, size, device=ensemble.device) * 2048 - 1024
    if ensemble.device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(ensemble.device.type, dtype=torch.bfloat16, enabled=bf16)
    labels = [name for name, _ in ensemble.labels[:4]]

    def once() -> None:
        with autocast:
            for inference in ensemble.infer_many(images):
                ensemble.gradcam(inference, labels)
        if ensemble.device.type == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        once()
        done += batch
    return done / (time.perf_counter() - started)


def agreement(analyzer: Analyzer) -> dict[str, float]:
    """Largest difference of a probability between the ensemble on CUDA (float32, and bf16
    autocast) and the same networks on the CPU, over four random inputs."""
    ensemble = analyzer.ensemble
    if ensemble.device.type != "cuda":
        return {}
    size = ensemble.preprocessing.size
    generator = torch.Generator().manual_seed(16)
    images = torch.rand(4, 1, size, size, generator=generator) * 2048 - 1024
    cpu_members = [
        LoadedMember(m.bundle, m.weight, copy.deepcopy(m.network).to("cpu"))
        for m in ensemble.members
    ]
    reference = Ensemble(cpu_members, torch.device("cpu")).infer_many(images)
    found = {}
    for bf16 in (False, True):
        answers = Ensemble(ensemble.members, ensemble.device, bf16=bf16).infer_many(images)
        found["bf16" if bf16 else "float32"] = max(
            abs(a.probability - b.probability)
            for answer, expected in zip(answers, reference, strict=True)
            for a, b in zip(answer.predictions, expected.predictions, strict=True)
        )
    return found


def analyse_file(stages: list[pipeline.Stage], path: Path) -> None:
    """One spooled image through the worker's pipeline (without the ledger and the queue)."""
    pipeline.run(stages, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=10.0, help="per model-only figure")
    parser.add_argument("--quick", action="store_true", help="small figures (tests, CPU)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="gpu-bench-")))
    args = parser.parse_args()
    if args.quick:
        args.images, args.seconds, args.threads = 4, 0.5, 2
    work = Path(tempfile.mkdtemp(prefix="cxr-gpu-"))
    write_demo_bundles(work / "models")
    settings = Settings(
        data_dir=work, models_dir=work / "models", device=args.device,
        analysis_concurrency=args.threads, max_batch=args.threads,
    )  # fmt: skip
    analyzer = Analyzer(settings)
    spool = Spool(work / "spool")
    device = analyzer.ensemble.device
    report: dict[str, Any] = {
        "machine": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model_only_images_per_s": {},
    }
    for bf16 in (False, True) if device.type == "cuda" else (False,):
        for batch in (1, 8, 32, 64) if not args.quick else (1, 4):
            key = f"batch {batch}{' bf16' if bf16 else ''}"
            report["model_only_images_per_s"][key] = round(
                model_only(analyzer, batch, bf16, args.seconds), 1
            )
    report["max_probability_difference_to_cpu"] = agreement(analyzer)
    source = make_dx_chest(2500, 2048)
    image = spool.instance_path(str(source.StudyInstanceUID), str(source.SOPInstanceUID))
    image.parent.mkdir(parents=True, exist_ok=True)
    source.save_as(image, enforce_file_format=True)
    stages = pipeline.compose(analyzer, spool)
    analyse_file(stages, image)  # warm-up
    latencies = []
    for _ in range(10 if not args.quick else 2):
        started = time.perf_counter()
        analyse_file(stages, image)
        latencies.append(time.perf_counter() - started)
    report["single_image_s"] = {
        "p50": round(statistics.median(latencies), 3),
        "max": round(max(latencies), 3),
    }
    analyzer.batch_for(args.threads)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(lambda _i: analyse_file(stages, image), range(args.images)))
    elapsed = time.perf_counter() - started
    batcher = analyzer.batcher
    report["analysis"] = {
        "images": args.images,
        "threads": args.threads,
        "images_per_min": round(60 * args.images / elapsed, 1),
        "mean_batch": round(batcher.images / max(batcher.forward_passes, 1), 2),
    }
    best = max(report["model_only_images_per_s"].values()) * 60
    report["analysis"]["fraction_of_model_only"] = round(
        report["analysis"]["images_per_min"] / best, 3
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
