"""``analyze`` on every frontal chest radiograph of the corpus (DICOM, PNG, JPEG): findings, a
score and heatmaps for each; the malformed one fails with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_node.errors import RejectedInput
from tests.integration.conftest import inventory
from workers.analysis import Analyzer
from workers.offline import read_source
from workers.previews import preview_shape

pytestmark = pytest.mark.integration


# CPU-heavy (every case analysed in-process too): room for a loaded 2-core machine.
@pytest.mark.timeout(900)
def test_every_frontal_chest_file_is_analysed(corpus: Path, analyzer: Analyzer) -> None:
    rows = inventory(corpus, "CHEST-FRONTAL (accept")
    assert len(rows) >= 60
    kinds = set()
    for row in rows:
        source = read_source(corpus / row["file"])
        analysed = analyzer.analyse(source)
        result = analysed.analysis
        assert len(result.findings) == 18, row["file"]
        assert 0.0 <= result.abnormality_score <= 1.0
        assert analysed.source_shape == (source.Rows, source.Columns)
        assert analysed.picture.shape == preview_shape((source.Rows, source.Columns))
        positives = result.positive_findings
        if positives:
            assert analysed.heatmap is not None and analysed.heatmap.shape == analysed.picture.shape
            for finding in positives:
                assert finding.region is not None, (row["file"], finding.label)
                assert 0 <= finding.region.x_min < finding.region.x_max <= source.Columns
                assert 0 <= finding.region.y_min < finding.region.y_max <= source.Rows
        kinds.add(row["kind"])
    assert kinds == {"dicom", "image"}


def test_malformed_frontal_chest_fails_with_a_reason(corpus: Path, analyzer: Analyzer) -> None:
    rows = inventory(corpus, "CHEST-FRONTAL + MALFORMED")
    assert rows
    for row in rows:
        with pytest.raises(RejectedInput) as caught:
            analyzer.analyse(read_source(corpus / row["file"]))
        assert caught.value.reason_code == "UNDECODABLE"
