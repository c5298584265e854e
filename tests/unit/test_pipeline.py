"""The analysis pipeline (issue 16, workers/pipeline.py): its stages in order, one spooled
image through them to results on disk, refusals from the load stage, and several images through
one batching analyzer getting what each gets alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread

from cxr_node.errors import RejectedInput
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from tests.unit._synthetic import make_dx_chest
from tests.unit.test_batching import _ensemble
from workers import pipeline
from workers.analysis import Analyzer
from workers.batching import InferenceBatcher

STAGES = ["load", "preprocess", "infer", "explain", "score", "encode", "write"]


def _spooled(spool: Spool, rows: int = 600, columns: int = 500) -> Path:
    dataset = make_dx_chest(rows, columns)
    path = spool.instance_path(str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID))
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(Settings(gradcam_top_k=2), _ensemble())


def test_the_stages_read_in_order(analyzer: Analyzer, tmp_path: Path) -> None:
    assert [name for name, _ in pipeline.compose(analyzer, Spool(tmp_path))] == STAGES


def test_a_spooled_image_goes_through_to_its_results_and_pictures(
    analyzer: Analyzer, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    path = _spooled(spool)
    timings: dict[str, float] = {}
    work = pipeline.run(pipeline.compose(analyzer, spool), path, timings)
    assert list(timings) == STAGES and all(seconds > 0 for seconds in timings.values())
    assert work.analysed is not None
    assert work.analysed.source_shape == (600, 500)
    # the same analysis as the one call that writes nothing
    alone = analyzer.analyse(dcmread(path)).analysis
    assert [f.probability for f in work.analysed.analysis.findings] == pytest.approx(
        [f.probability for f in alone.findings], abs=1e-6
    )
    assert sorted(row.kind for row in work.rows) == ["sc", "sr"]
    for row in work.rows:
        written = dcmread(spool.resolve(row.path))
        assert written.SOPInstanceUID == row.sop_instance_uid
        assert row.source_sop_instance_uid == work.analysed.analysis.sop_instance_uid
    previews = path.parent / "previews" / path.stem
    assert (previews / "image.png").is_file() and (previews / "geometry.json").is_file()


def test_the_load_stage_says_why_a_file_cannot_be_analysed(
    analyzer: Analyzer, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    stages = pipeline.compose(analyzer, spool)
    with pytest.raises(RejectedInput) as missing:
        pipeline.run(stages, tmp_path / "gone.dcm")
    assert missing.value.reason_code == "SPOOL_FILE_MISSING"
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 10)
    with pytest.raises(RejectedInput) as unreadable:
        pipeline.run(stages, garbage)
    assert unreadable.value.reason_code == "UNREADABLE"
    assert not list(spool.root.rglob("*.dcm"))  # nothing written for either


def test_a_stage_out_of_order_is_a_bug_said_plainly(analyzer: Analyzer, tmp_path: Path) -> None:
    stages = dict(pipeline.compose(analyzer, Spool(tmp_path)))
    with pytest.raises(RuntimeError, match="'infer' ran before"):
        pipeline.run([("infer", stages["infer"])], tmp_path / "x.dcm")


def test_images_analysed_at_once_share_forward_passes_and_get_their_own_results(
    tmp_path: Path,
) -> None:
    ensemble = _ensemble()
    batching = Analyzer(Settings(gradcam_top_k=2), ensemble)
    batching.batcher = InferenceBatcher(ensemble, max_batch=4, max_batch_wait_ms=500)
    spool = Spool(tmp_path / "spool")
    paths = [_spooled(spool, 500 + 20 * i, 400 + 10 * i) for i in range(4)]
    stages = pipeline.compose(batching, spool)
    works: dict[int, pipeline.ImageWork] = {}
    start = threading.Barrier(len(paths))

    def analyse(index: int) -> None:
        start.wait()
        works[index] = pipeline.run(stages, paths[index])

    threads = [threading.Thread(target=analyse, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    batching.batcher.close()
    assert batching.batcher.images == 4 and batching.batcher.forward_passes < 4
    alone = Analyzer(Settings(gradcam_top_k=2), ensemble)
    for index, path in enumerate(paths):
        work = works[index]
        assert work.analysed is not None and len(work.rows) == 2
        expected = alone.analyse(dcmread(path)).analysis
        got = work.analysed.analysis
        assert got.sop_instance_uid == expected.sop_instance_uid
        assert [f.probability for f in got.findings] == pytest.approx(
            [f.probability for f in expected.findings], abs=1e-5
        )
        assert [f.region for f in got.findings] == [f.region for f in expected.findings]


def test_a_ledger_path_outside_the_spool_refuses_that_image_only(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import cast

    from workers.runtime import WorkerContext
    from workers.tasks import _analyse_instance

    ctx = cast(WorkerContext, SimpleNamespace(spool=Spool(tmp_path / "spool"), pipeline=[]))
    with pytest.raises(RejectedInput) as refused:
        _analyse_instance(ctx, "../../outside.dcm")
    assert refused.value.reason_code == "UNREADABLE"
