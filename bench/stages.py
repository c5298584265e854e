"""Where one full-size radiograph's analysis spends its time, stage by stage (issue 16).

A synthetic 2500x2048 16-bit DX (10 MB, uncompressed; made here, not from the corpus) and,
when the corpus is there, a full-size JPEG 2000 chest radiograph, each analysed ``--rounds``
times in this process by the same functions the analysis worker calls, in order: read the file,
decode and display (LUTs, window), model input (square, resize, range), the ensemble's forward
pass, Grad-CAM, regions and overlays, SR + SC encoding, the web pictures, writing the files.
Prints the median milliseconds per stage and the share of the whole, as JSON and as a table.

    .venv/bin/python bench/stages.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydicom import dcmread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_node.settings import Settings  # noqa: E402
from cxr_node.spool import Spool  # noqa: E402
from tests.unit._synthetic import make_dx_chest  # noqa: E402
from workers import analysis, pixels, previews, scoring  # noqa: E402
from workers.bundles import write_demo_bundles  # noqa: E402
from workers.results import encode_results, write_plain  # noqa: E402

JPEG2000_CHEST = "pylibjpeg-data/RG1_J2KI.dcm"


def _synthetic(folder: Path) -> Path:
    dataset = make_dx_chest(2500, 2048)
    path = folder / "synthetic-dx-2500x2048.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def _stages(analyzer: analysis.Analyzer, path: Path, out: Path) -> dict[str, float]:
    """One analysis, timed per stage (milliseconds), as Analyzer.analyse and the task do it."""
    times: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = step()
        times[name] = (time.perf_counter() - started) * 1000
        return result

    source = timed("read file", lambda: dcmread(path))
    image = timed("decode + display", lambda: pixels.displayed_image(source))
    batch, _box = timed("model input", lambda: analyzer.model_input(image))
    inference = timed("forward pass", lambda: analyzer.ensemble.infer(batch))
    ranked = sorted(
        inference.predictions,
        key=lambda p: scoring.normalised_probability(p.probability, p.threshold),
        reverse=True,
    )
    explained = list({p.label: p for p in [*[p for p in ranked if p.positive], *ranked[:3]]})
    timed("grad-cam", lambda: analyzer.ensemble.gradcam(inference, explained))
    fresh = dcmread(path)  # analyse() decodes again, as the worker does (pydicom caches pixels)
    analysed = timed("whole analyse()", lambda: analyzer.analyse(fresh))
    times["regions + overlays (analyse - above)"] = max(
        0.0,
        times["whole analyse()"]
        - sum(times[k] for k in ("decode + display", "model input", "forward pass", "grad-cam")),
    )
    results = timed("SR + SC encoding", lambda: encode_results(source, analysed))
    spool = Spool(out / "spool")
    timed("web pictures", lambda: previews.write_previews(spool, "s/x.dcm", analysed))
    timed("write files", lambda: [write_plain(out, dataset) for _kind, dataset in results])
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cxr-stages-"))
    write_demo_bundles(work / "models")
    analyzer = analysis.Analyzer(Settings(data_dir=work, models_dir=work / "models"))
    images = {"synthetic DX 2500x2048 16-bit": _synthetic(work)}
    corpus = Path(os.environ.get("CXR_CORPUS", REPO.parent / "shared" / "cxr-corpus"))
    if (corpus / JPEG2000_CHEST).is_file():
        images["JPEG 2000 " + JPEG2000_CHEST] = corpus / JPEG2000_CHEST
    report: dict[str, Any] = {"machine": platform.platform(), "threads": args.threads}
    for name, path in images.items():
        _stages(analyzer, path, work)  # warm-up
        rounds = [_stages(analyzer, path, work) for _ in range(args.rounds)]
        medians = {stage: statistics.median(r[stage] for r in rounds) for stage in rounds[0]}
        whole = sum(ms for stage, ms in medians.items() if stage != "whole analyse()")
        report[name] = {"median_ms": medians, "per_image_ms": whole}
        print(f"\n{name}: {whole:.0f} ms per image (median of {args.rounds})")
        for stage, ms in medians.items():
            share = "" if stage == "whole analyse()" else f"{100 * ms / whole:5.1f} %"
            print(f"  {stage:<38} {ms:8.1f} ms {share}")
    print(json.dumps(report, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
