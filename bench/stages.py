"""Where one full-size radiograph's analysis spends its time, stage by stage (issue 16).

A synthetic 2500x2048 16-bit DX (10 MB, uncompressed; made here, not from the corpus) and, when
the corpus is there, a full-size JPEG 2000 chest radiograph, each analysed ``--rounds`` times in
this process through the stages of the worker's pipeline (workers/pipeline.py): load (read the
file), preprocess (decode, LUTs and window, the network's input, the 8-bit picture), infer (the
ensemble's forward pass), explain (Grad-CAM, regions, heatmaps), score, encode (SR + SC), write
(the web pictures and the result files); the JPEG 2000 image also with
``jpeg2000_reduced_decode``. Prints the median milliseconds per stage and the share
of the whole, as JSON and as a table.

    .venv/bin/python bench/stages.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydicom import dcmread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_node.settings import Settings  # noqa: E402
from cxr_node.spool import Spool  # noqa: E402
from tests.unit._synthetic import make_dx_chest  # noqa: E402
from workers import analysis, pipeline  # noqa: E402
from workers.bundles import write_demo_bundles  # noqa: E402

JPEG2000_CHEST = "pylibjpeg-data/RG1_J2KI.dcm"


def _synthetic(folder: Path) -> Path:
    dataset = make_dx_chest(2500, 2048)
    path = folder / "synthetic-dx-2500x2048.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def _stages(stages: list[pipeline.Stage], spool: Spool, path: Path) -> dict[str, float]:
    """One analysis through the worker's pipeline, timed per stage (milliseconds)."""
    dataset = dcmread(path)  # a fresh copy in the spool each round: the load stage reads it
    spooled = spool.instance_path(str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID))
    spooled.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, spooled)
    seconds: dict[str, float] = {}
    pipeline.run(stages, spooled, seconds)
    return {stage: s * 1000 for stage, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cxr-stages-"))
    write_demo_bundles(work / "models")
    settings = Settings(data_dir=work, models_dir=work / "models")
    analyzer = analysis.Analyzer(settings)
    spool = Spool(work / "spool")
    stages = pipeline.compose(analyzer, spool)
    images = {"synthetic DX 2500x2048 16-bit": (_synthetic(work), stages)}
    corpus = Path(os.environ.get("CXR_CORPUS", REPO.parent / "shared" / "cxr-corpus"))
    if (corpus / JPEG2000_CHEST).is_file():
        images["JPEG 2000 " + JPEG2000_CHEST] = (corpus / JPEG2000_CHEST, stages)
        reducing = analysis.Analyzer(
            settings.model_copy(update={"jpeg2000_reduced_decode": True}), analyzer.ensemble
        )
        images["JPEG 2000, jpeg2000_reduced_decode"] = (
            corpus / JPEG2000_CHEST,
            pipeline.compose(reducing, spool),
        )
    report: dict[str, Any] = {"machine": platform.platform(), "threads": args.threads}
    for name, (path, stages) in images.items():
        _stages(stages, spool, path)  # warm-up
        rounds = [_stages(stages, spool, path) for _ in range(args.rounds)]
        medians = {stage: statistics.median(r[stage] for r in rounds) for stage in rounds[0]}
        whole = sum(medians.values())
        report[name] = {"median_ms": medians, "per_image_ms": whole}
        print(f"\n{name}: {whole:.0f} ms per image (median of {args.rounds})")
        for stage, ms in medians.items():
            print(f"  {stage:<12} {ms:8.1f} ms {100 * ms / whole:5.1f} %")
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
