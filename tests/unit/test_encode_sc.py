"""Secondary Capture heatmap encoder (workers.encode.sc) on a synthetic DX chest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from cxr_node.jobs import ImageAnalysis
from tests.dicom_checks import dciodvfy
from tests.unit._synthetic import (
    corpus_file,
    crude_display,
    make_analysis,
    make_dx_chest,
)
from workers.encode.sc import (
    HOT_FLOOR,
    MAX_ALPHA,
    MAX_SIDE,
    blend,
    build_heatmap_sc,
    colormap,
    layout,
    legend_lines,
    render,
)


def _heatmap(rows: int, columns: int) -> np.ndarray:
    """One hot blob in the lower left lung, synthetic Grad-CAM-like map in [0, 1]."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    blob = np.exp(
        -(((x - columns * 0.27) / (columns * 0.1)) ** 2 + ((y - rows * 0.72) / (rows * 0.1)) ** 2)
    )
    return np.asarray(blob, dtype=np.float32)


def _build(
    source: pydicom.Dataset, analysis: ImageAnalysis, heatmap: np.ndarray | None
) -> pydicom.Dataset:
    return build_heatmap_sc(
        source,
        crude_display(source),
        heatmap,
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=902,
    )


def _write(sc: pydicom.Dataset, tmp_path: Path) -> Path:
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def source() -> pydicom.Dataset:
    return make_dx_chest()


@pytest.mark.parametrize(("demo", "with_heatmap"), [(True, True), (False, True), (False, False)])
def test_dciodvfy_reports_no_errors(
    source: pydicom.Dataset, tmp_path: Path, demo: bool, with_heatmap: bool
) -> None:
    heatmap = _heatmap(source.Rows, source.Columns) if with_heatmap else None
    sc = _build(source, make_analysis(source.SOPInstanceUID, demo=demo), heatmap)
    errors, warnings = dciodvfy(_write(sc, tmp_path))
    assert errors == [], "\n".join(errors + warnings)


def test_in_source_study_new_series_with_source_reference(
    source: pydicom.Dataset, tmp_path: Path
) -> None:
    sc = _build(source, make_analysis(source.SOPInstanceUID, demo=False), _heatmap(256, 256))
    back = pydicom.dcmread(_write(sc, tmp_path))
    assert back.SOPClassUID == SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID
    (reference,) = back.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert back.BodyPartExamined == "CHEST"
    assert "Laterality" not in back  # chest: unpaired, so absent (Type 2C)
    assert list(back.PatientOrientation) == list(source.PatientOrientation)
    assert back.ConversionType == "WSD"
    assert back.BurnedInAnnotation == "YES"
    assert back.PhotometricInterpretation == "RGB"
    assert back.SamplesPerPixel == 3


@pytest.mark.parametrize("demo", [True, False])
def test_demo_wording(source: pydicom.Dataset, demo: bool) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=demo)
    sc = _build(source, analysis, None)
    description = str(sc.SeriesDescription)
    assert len(description) <= 64
    assert "heatmap" in description
    assert "AI-generated" in description
    assert "not for diagnostic use" in description
    assert ("DEMO" in description) is demo
    lines = legend_lines(analysis)
    assert "AI-generated - not for diagnosis" in lines
    assert ("DEMO MODEL - NOT TRAINED" in lines) is demo
    assert lines[0] == "Effusion 81%"


def test_legend_names_top_finding_when_none_positive(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    for finding in analysis.findings:
        finding.positive = False
    assert legend_lines(analysis)[0] == "No finding above threshold (top: Effusion 81%)"


def test_overlay_only_where_hot(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    heatmap = np.zeros((256, 256), dtype=np.float32)
    heatmap[180:200, 60:80] = 1.0
    pixels = render(crude_display(source), heatmap, analysis)
    hot = pixels[190, 70].astype(int)
    cold = pixels[40, 200].astype(int)
    assert hot[0] > hot[2]  # reddish where the map is hot
    assert cold[0] == cold[1] == cold[2]  # untouched grey elsewhere


def test_no_upscaling_of_small_images(source: pydicom.Dataset) -> None:
    sc = _build(source, make_analysis(source.SOPInstanceUID, demo=True), None)
    assert sc.Columns == source.Columns
    width, height, band = layout(source.Rows, source.Columns, 3, False)
    assert (width, height) == (source.Columns, source.Rows)
    assert sc.Rows == height + band


@pytest.mark.parametrize(("rows", "columns"), [(2000, 1600), (1200, 2400), (3000, 3000)])
def test_large_images_are_downscaled_without_stretching(rows: int, columns: int) -> None:
    width, height, band = layout(rows, columns, 3, True)
    assert max(width, height + band) <= MAX_SIDE
    assert width / height == pytest.approx(columns / rows, rel=0.01)


def test_large_source_end_to_end(tmp_path: Path) -> None:
    source = make_dx_chest(rows=1400, columns=1100)
    analysis = make_analysis(source.SOPInstanceUID, demo=True, rows=1400, columns=1100)
    sc = _build(source, analysis, _heatmap(1400, 1100))
    assert max(sc.Rows, sc.Columns) <= MAX_SIDE
    errors, warnings = dciodvfy(_write(sc, tmp_path))
    assert errors == [], "\n".join(errors + warnings)


def test_a_scaled_down_picture_of_the_source_is_drawn(tmp_path: Path) -> None:
    source = make_dx_chest(rows=2000, columns=1600)
    analysis = make_analysis(source.SOPInstanceUID, demo=True, rows=2000, columns=1600)
    picture = np.asarray(
        Image.fromarray(crude_display(source)).resize((819, 1024), Image.Resampling.BILINEAR)
    )
    sc = build_heatmap_sc(
        source,
        picture,
        _heatmap(1024, 819),
        analysis,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=902,
    )
    assert max(sc.Rows, sc.Columns) <= MAX_SIDE
    errors, warnings = dciodvfy(_write(sc, tmp_path))
    assert errors == [], "\n".join(errors + warnings)
    with pytest.raises(ValueError, match="aspect"):  # not a picture of this source
        build_heatmap_sc(
            source,
            picture[:, :700],
            None,
            analysis,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=902,
        )


def test_rejects_mismatched_geometry(source: pydicom.Dataset) -> None:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    with pytest.raises(ValueError, match="heatmap"):
        build_heatmap_sc(
            source,
            crude_display(source),
            np.zeros((10, 10), dtype=np.float32),
            analysis,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=902,
        )


def test_laterality_is_copied(source: pydicom.Dataset, tmp_path: Path) -> None:
    source.BodyPartExamined = "BREAST"
    source.Laterality = "R"
    sc = _build(source, make_analysis(source.SOPInstanceUID, demo=False), None)
    assert sc.Laterality == "R"
    assert sc.BodyPartExamined == "BREAST"


def test_sparse_header_still_validates(source: pydicom.Dataset, tmp_path: Path) -> None:
    """No PatientOrientation or PatientID in the source: empty (Type 2) in the SC."""
    for keyword in ("PatientOrientation", "PatientID", "BodyPartExamined"):
        delattr(source, keyword)
    sc = _build(source, make_analysis(source.SOPInstanceUID, demo=False), None)
    assert sc.PatientOrientation == ""
    assert "BodyPartExamined" not in sc
    assert sc.Laterality == ""
    errors, warnings = dciodvfy(_write(sc, tmp_path))
    assert errors == [], "\n".join(errors + warnings)


def test_real_cr_chest_validates(tmp_path: Path) -> None:
    """A real MONOCHROME1 CR with a sparse header (no PatientID, no orientation)."""
    source = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    analysis = make_analysis(
        source.SOPInstanceUID, demo=True, rows=source.Rows, columns=source.Columns
    )
    sc = _build(source, analysis, _heatmap(source.Rows, source.Columns))
    path = _write(sc, tmp_path)
    errors, warnings = dciodvfy(path)
    assert errors == [], "\n".join(errors + warnings)
    assert pydicom.dcmread(path).SourceImageSequence[0].ReferencedSOPInstanceUID == (
        source.SOPInstanceUID
    )


_JET = [(0.0, 0, 0, 128), (0.125, 0, 0, 255), (0.375, 0, 255, 255)]
_JET += [(0.625, 255, 255, 0), (0.875, 255, 0, 0), (1.0, 128, 0, 0)]


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic jet colour map, uint8 RGB (the reference)."""
    positions = [anchor[0] for anchor in _JET]
    channels = [np.interp(values, positions, [anchor[c] for anchor in _JET]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _whole_image_blend(gray: np.ndarray, heatmap: np.ndarray | None) -> np.ndarray:
    """The overlay computed on every pixel, as the encoder first did (the reference)."""
    base = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)
    if heatmap is None:
        return base.astype(np.uint8)
    alpha = MAX_ALPHA * np.clip((heatmap - HOT_FLOOR) / (1.0 - HOT_FLOOR), 0.0, 1.0)
    colour = _jet(heatmap).astype(np.float32)
    out = base * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def test_blend_computes_only_hot_pixels_with_the_same_result() -> None:
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, (97, 131), dtype=np.uint8)
    maps = [
        rng.random((97, 131), dtype=np.float32),
        rng.random((97, 131), dtype=np.float32) * 1.6 - 0.3,  # out of range both ways
        np.float32(HOT_FLOOR) + (rng.random((97, 131), dtype=np.float32) - 0.5) * 1e-6,
        np.zeros((97, 131), dtype=np.float32),
        _heatmap(97, 131),
    ]
    for heatmap in maps:
        assert np.array_equal(blend(gray, heatmap), _whole_image_blend(gray, heatmap))
    assert np.array_equal(blend(gray, None), _whole_image_blend(gray, None))
    values = np.linspace(-0.1, 1.1, 1001)
    assert np.array_equal(colormap(values), _jet(values))
