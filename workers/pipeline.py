"""The analysis of one spooled image as a pipeline of named stages (issue 16).

    load -> preprocess -> infer -> explain -> score -> encode -> write

:func:`compose` lists them in that order and :func:`run` passes one :class:`ImageWork` through
them, timing each stage when asked (``bench/stages.py``). The Celery task is a thin wrapper
around it (:mod:`workers.tasks`). Batching lives in one place: the infer stage hands its image
to the analyzer's :class:`~workers.batching.InferenceBatcher`, which joins the images of the
studies being analysed at the same time into one forward pass per member.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydicom import Dataset, dcmread

from cxr_node.errors import RejectedInput
from cxr_node.ledger import ResultRow
from cxr_node.spool import Spool
from workers.analysis import AnalysedImage, Analyzer, Explanation, Prepared
from workers.ensemble import Inference
from workers.previews import write_previews
from workers.results import encode_results, to_bytes

T = TypeVar("T")


@dataclass
class ImageWork:
    """One image on its way through the stages; each stage fills in its own field."""

    path: Path
    source: Dataset | None = None
    prepared: Prepared | None = None
    inference: Inference | None = None
    explanation: Explanation | None = None
    analysed: AnalysedImage | None = None
    results: list[tuple[str, Dataset]] = field(default_factory=list)
    rows: list[ResultRow] = field(default_factory=list)


Stage = tuple[str, Callable[[ImageWork], None]]


def _made(value: T | None, stage: str) -> T:
    if value is None:
        raise RuntimeError(f"pipeline stage {stage!r} ran before the stage that feeds it")
    return value


def read_spooled(path: Path) -> Dataset:
    """The load stage: a spooled Part 10 file (PS3.10), or the reason it cannot be read."""
    try:
        return dcmread(path)
    except FileNotFoundError:
        raise RejectedInput("SPOOL_FILE_MISSING", "the spooled file is gone") from None
    except Exception as exc:
        raise RejectedInput("UNREADABLE", f"file cannot be parsed ({type(exc).__name__})") from None


def compose(analyzer: Analyzer, spool: Spool) -> list[Stage]:
    """The stages, in order, of analysing a spooled image and writing its results beside it."""

    def load(work: ImageWork) -> None:
        work.source = read_spooled(work.path)

    def preprocess(work: ImageWork) -> None:
        work.prepared = analyzer.preprocess(_made(work.source, "preprocess"))

    def infer(work: ImageWork) -> None:
        work.inference = analyzer.infer(_made(work.prepared, "infer"))

    def explain(work: ImageWork) -> None:
        prepared = _made(work.prepared, "explain")
        work.explanation = analyzer.explain(prepared, _made(work.inference, "explain"))

    def score(work: ImageWork) -> None:
        work.analysed = analyzer.score(
            _made(work.prepared, "score"),
            _made(work.inference, "score"),
            _made(work.explanation, "score"),
        )

    def encode(work: ImageWork) -> None:
        work.results = encode_results(_made(work.source, "encode"), _made(work.analysed, "encode"))

    def write(work: ImageWork) -> None:
        work.rows = write_results(spool, work)

    return [
        ("load", load),
        ("preprocess", preprocess),
        ("infer", infer),
        ("explain", explain),
        ("score", score),
        ("encode", encode),
        ("write", write),
    ]


def run(stages: list[Stage], path: Path, timings: dict[str, float] | None = None) -> ImageWork:
    """One image through ``stages``; with ``timings``, each stage's seconds are added to it.
    RejectedInput from any stage says why the image is not analysed."""
    work = ImageWork(path=path)
    for name, stage in stages:
        started = time.perf_counter()
        stage(work)
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
    return work


def write_results(spool: Spool, work: ImageWork) -> list[ResultRow]:
    """The write stage: the web app's pictures beside the source (``previews/<image>/``), each
    result as a Part 10 file in the spool's results; one ledger row per result."""
    source = _made(work.source, "write")
    write_previews(spool, spool.relative(work.path), _made(work.analysed, "write"))
    rows = []
    for kind, dataset in work.results:
        path = spool.result_path(str(source.StudyInstanceUID), str(dataset.SOPInstanceUID))
        spool.write_atomically(path, [to_bytes(dataset)])
        rows.append(
            ResultRow(
                sop_instance_uid=str(dataset.SOPInstanceUID),
                source_sop_instance_uid=str(source.SOPInstanceUID),
                kind=kind,
                path=spool.relative(path),
            )
        )
    return rows
