"""JPEG 2000 at a reduced resolution level (issue 16, workers/jpeg2000.py): the codestream's
header read right, only the plain case taken, the level's pixels those of the full image
averaged, and an analysis of it reported in the source's geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames

from cxr_node.settings import Settings
from tests.unit._synthetic import corpus_file, make_dx_chest
from tests.unit.test_batching import _ensemble
from workers import jpeg2000
from workers.analysis import Analyzer
from workers.previews import preview_shape

LOSSLESS_HIP = "wg04/RG2_J2KR.dcm"  # 2140x1760, 10 bits, 5 levels
LOSSY_CHEST = "pylibjpeg-data/RG1_J2KI.dcm"  # 1955x1841, 15 bits, 5 levels
KAKADU_HAND = "pylibjpeg-data/NM_Kakadu44_SOTmarkerincons.dcm"  # precision 16, Bits Stored 12
MALFORMED = "pylibjpeg-data/966.dcm"


def _frame(relative: str) -> bytes:
    dataset = dcmread(corpus_file(relative))
    return next(generate_frames(dataset.PixelData, number_of_frames=1))


def test_the_main_header_is_read() -> None:
    header = jpeg2000.read_codestream_header(_frame(LOSSLESS_HIP))
    assert header == jpeg2000.Codestream(
        width=1760, height=2140, components=1, precision=10, signed=False, levels=5
    )
    assert jpeg2000.read_codestream_header(b"not a codestream") is None
    assert jpeg2000.read_codestream_header(_frame(LOSSLESS_HIP)[:45]) is None  # cut before COD


def test_levels_are_dropped_while_the_longer_side_stays_long_enough() -> None:
    header = jpeg2000.Codestream(2048, 2500, 1, 12, False, 5)
    assert jpeg2000.reduction_for(header, 896) == 1  # 1250; 625 would be too small
    assert jpeg2000.reduction_for(header, 300) == 3  # 313
    assert jpeg2000.reduction_for(header, 4000) == 0
    assert jpeg2000.reduction_for(jpeg2000.Codestream(2048, 2500, 1, 12, False, 0), 300) == 0
    # 2500 / 4 = 625 both ways; 3581 / 4 rounds to 895 in Pillow but 896 in OpenJPEG: skipped
    assert jpeg2000.reduction_for(jpeg2000.Codestream(2048, 3581, 1, 12, False, 5), 400) == 3
    assert jpeg2000.reduction_for(jpeg2000.Codestream(2049, 2049, 1, 12, False, 5), 400) == 1
    assert jpeg2000.level_shape(2140, 1760, 1) == (1070, 880)


def test_the_reduced_level_is_the_full_image_averaged() -> None:
    dataset = dcmread(corpus_file(LOSSLESS_HIP))
    reduced = jpeg2000.decode_reduced(dataset, 896)
    assert reduced is not None and reduced.shape == (1070, 880) and reduced.dtype == np.uint16
    full = dataset.pixel_array.astype(np.float64)
    averaged = full.reshape(1070, 2, 880, 2).mean(axis=(1, 3))
    assert np.corrcoef(averaged.ravel(), reduced.ravel())[0, 1] > 0.999
    assert abs(float(np.median(reduced - averaged))) < 1  # stored values, not Pillow's 16-bit


@pytest.mark.parametrize(
    "relative",
    [KAKADU_HAND, MALFORMED],
    ids=["precision-is-not-bits-stored", "malformed-codestream"],
)
def test_anything_but_the_plain_case_is_left_to_the_full_decode(relative: str) -> None:
    assert jpeg2000.decode_reduced(dcmread(corpus_file(relative)), 896) is None


def test_offsets_and_subsampling_are_left_to_the_full_decode() -> None:
    frame = bytearray(_frame(LOSSLESS_HIP))
    start = frame.find(jpeg2000.SOC_SIZ)
    assert not jpeg2000.read_codestream_header(bytes(frame)).offset  # type: ignore[union-attr]
    shifted = bytearray(frame)
    shifted[start + 4 + 2 + 10 : start + 4 + 2 + 14] = (8).to_bytes(4, "big")  # XOsiz
    assert jpeg2000.read_codestream_header(bytes(shifted)).offset  # type: ignore[union-attr]
    halved = bytearray(frame)
    halved[start + 4 + 39] = 2  # XRsiz of the component
    assert jpeg2000.read_codestream_header(bytes(halved)).subsampled  # type: ignore[union-attr]


def test_an_uncompressed_image_is_left_alone() -> None:
    assert jpeg2000.decode_reduced(make_dx_chest(2500, 2048), 896) is None


@pytest.fixture(scope="module")
def analyzers() -> tuple[Analyzer, Analyzer]:
    ensemble = _ensemble()
    full = Analyzer(Settings(gradcam_top_k=2), ensemble)
    reduced = Analyzer(Settings(gradcam_top_k=2, jpeg2000_reduced_decode=True), ensemble)
    return full, reduced


def test_reduced_decoding_is_off_unless_asked(analyzers: tuple[Analyzer, Analyzer]) -> None:
    full, reduced = analyzers
    assert full.reduced_min_side is None and reduced.reduced_min_side == 896
    prepared = full.preprocess(dcmread(corpus_file(LOSSY_CHEST)))
    assert prepared.image_shape == prepared.source_shape == (1955, 1841)


def test_an_analysis_of_the_reduced_level_speaks_in_source_pixels(
    analyzers: tuple[Analyzer, Analyzer], tmp_path: Path
) -> None:
    full, reduced = analyzers
    dataset = dcmread(corpus_file(LOSSY_CHEST))
    prepared = reduced.preprocess(dataset)
    assert prepared.image_shape == (978, 921) and prepared.source_shape == (1955, 1841)
    at_full = full.analyse(dcmread(corpus_file(LOSSY_CHEST)))
    at_level = reduced.analyse(dataset)
    assert at_level.source_shape == (1955, 1841)
    assert at_level.picture.shape == at_full.picture.shape == preview_shape((1955, 1841))
    assert np.abs(at_level.picture.astype(int) - at_full.picture.astype(int)).mean() < 2
    for coarse, fine in zip(at_level.analysis.findings, at_full.analysis.findings, strict=True):
        assert coarse.probability == pytest.approx(fine.probability, abs=0.05)
        if coarse.region is not None and fine.region is not None:
            assert coarse.region.x_max <= 1841 and coarse.region.y_max <= 1955
            # the same box in source pixels, give or take the coarser level's pixels
            assert coarse.region.x_min == pytest.approx(fine.region.x_min, abs=80)
            assert coarse.region.y_max == pytest.approx(fine.region.y_max, abs=80)
