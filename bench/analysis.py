"""Analysis speed: one radiograph from file to probabilities and heatmaps, models warm.

The default two-member DenseNet-121 DEMO ensemble at 224 with Grad-CAM for every positive
finding and the top three, on every CHEST-FRONTAL file of the corpus (DICOM read and decoded,
PNG/JPEG read and wrapped), several rounds; plus the cost of encoding SR + SC, apart. Usage:

    CXR_CORPUS=../shared/cxr-corpus .venv/bin/python bench/analysis.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_node.settings import load_settings
from workers.analysis import Analyzer
from workers.offline import read_source
from workers.results import encode_results


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = Path(os.environ.get("CXR_CORPUS", "../shared/cxr-corpus")).resolve()
    with (corpus / "inventory.csv").open(newline="") as stream:
        rows = [r for r in csv.DictReader(stream) if r["role"].startswith("CHEST-FRONTAL (accept")]
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as temp:
        subprocess.run(
            [sys.executable, "-m", "cxr_node", "models", "init-demo", "--data-dir", temp],
            check=True,
            capture_output=True,
        )
        analyzer = Analyzer(load_settings(data_dir=Path(temp), gradcam_top_k=3))
        batch, _box = analyzer.model_input(np.full((512, 512), 0.5, dtype=np.float32))
        for _ in range(3):
            analyzer.ensemble.infer(batch)  # warm-up
        model_only = []
        for _ in range(20):
            began = time.perf_counter()
            analyzer.ensemble.infer(batch)
            model_only.append(time.perf_counter() - began)
        by_kind: dict[str, list[float]] = {"dicom": [], "image": []}
        encode = []
        for _ in range(args.rounds):
            for row in rows:
                began = time.perf_counter()
                source = read_source(corpus / row["file"])
                analysed = analyzer.analyse(source)
                by_kind[row["kind"]].append(time.perf_counter() - began)
                began = time.perf_counter()
                encode_results(source, analysed)
                encode.append(time.perf_counter() - began)
    everything = by_kind["dicom"] + by_kind["image"]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} threads"
    )
    print(f"files: {len(rows)} CHEST-FRONTAL x {args.rounds} rounds")
    print(
        f"ensemble forward only (2 x DenseNet-121 at 224, batch 1): "
        f"median {statistics.median(model_only) * 1000:.0f} ms"
    )
    for kind, values in (
        ("DICOM", by_kind["dicom"]),
        ("PNG/JPEG", by_kind["image"]),
        ("all", everything),
    ):
        print(
            f"file -> probabilities + heatmaps, {kind}: n={len(values)} "
            f"median {statistics.median(values):.3f} s, p95 {percentile(values, 0.95):.3f} s, "
            f"max {max(values):.3f} s"
        )
    print(
        f"encode SR + SC: median {statistics.median(encode):.3f} s, "
        f"p95 {percentile(encode, 0.95):.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
