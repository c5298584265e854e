"""The pictures the worker keeps for the web app (workers.previews): the radiograph scaled to fit
1024 pixels, a colour overlay per explained finding, the geometry of the regions' frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_node.jobs import ImageAnalysis, ModelInfo, Priority
from cxr_node.pictures import label_slug
from cxr_node.spool import Spool
from workers.analysis import AnalysedImage
from workers.previews import overlay_png, picture_of, preview_shape, write_previews


def _analysed(overlays: dict[str, np.ndarray]) -> AnalysedImage:
    display = np.linspace(0.0, 1.0, 2000 * 1600, dtype=np.float32).reshape(2000, 1600)
    picture = picture_of(display)
    analysis = ImageAnalysis(
        sop_instance_uid="1.2.3.1",
        findings=[],
        abnormality_score=0.1,
        priority=Priority.ROUTINE,
        model=ModelInfo(name="m", version="1", demo=True, members=[], device_uid="1.2"),
    )
    return AnalysedImage(
        analysis=analysis,
        picture=picture,
        source_shape=(2000, 1600),
        heatmap=None,
        overlays=overlays,
    )


def test_preview_geometry_keeps_the_aspect_and_never_enlarges() -> None:
    assert preview_shape((2000, 1600)) == (1024, 819)
    assert preview_shape((3000, 2500)) == (1024, 853)
    assert preview_shape((512, 400)) == (512, 400)


def test_the_picture_is_the_display_scaled_down_smoothly() -> None:
    display = np.zeros((2000, 1600), dtype=np.float32)
    display[:, ::2] = 1.0  # one-pixel stripes: a filter that merely samples would keep them
    display[:1000] *= 0.5
    picture = picture_of(display)
    assert picture.dtype == np.uint8 and picture.shape == (1024, 819)
    top, bottom = picture[100:400, 100:700], picture[600:900, 100:700]
    assert abs(float(top.mean()) - 64) < 4 and abs(float(bottom.mean()) - 128) < 4
    assert int(top.max()) - int(top.min()) < 40  # averaged, not aliased into wide bands
    small = np.linspace(0.0, 1.0, 300 * 200, dtype=np.float32).reshape(300, 200)
    assert np.array_equal(picture_of(small), np.rint(small * 255).astype(np.uint8))


def test_an_overlay_is_transparent_where_the_map_is_cold() -> None:
    heatmap = np.zeros((100, 80), dtype=np.float32)
    heatmap[40:60, 30:50] = 1.0
    with Image.open(io.BytesIO(overlay_png(heatmap, (100, 80)))) as picture:
        assert picture.mode == "P" and "transparency" in picture.info  # palette with alpha
        assert picture.size == (80, 100)
        rgba = np.asarray(picture.convert("RGBA"))
    assert rgba[0, 0, 3] == 0 and rgba[50, 40, 3] > 100
    assert rgba[50, 40, 0] > rgba[50, 40, 2]  # hot is red, not blue


def test_pictures_are_written_beside_the_study_and_stale_ones_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    source = spool.instance_path("1.2.3", "1.2.3.1")
    spool.write_atomically(source, [b"dicom"])
    relative = spool.relative(source)
    shape = preview_shape((2000, 1600))
    hot = np.zeros(shape, dtype=np.float32)
    hot[100:200, 100:200] = 1.0
    write_previews(spool, relative, _analysed({"Pleural Effusion": hot, "Pneumothorax": hot}))
    folder = source.parent / "previews" / source.stem
    assert sorted(p.name for p in folder.iterdir()) == [
        "geometry.json",
        "heatmap-pleural-effusion.png",
        "heatmap-pneumothorax.png",
        "image.png",
    ]
    with Image.open(folder / "image.png") as image:
        assert image.mode == "L" and image.size == (819, 1024)
    assert json.loads((folder / "geometry.json").read_text()) == {"rows": 2000, "columns": 1600}
    write_previews(spool, relative, _analysed({"Pneumothorax": hot}))
    assert not (folder / "heatmap-pleural-effusion.png").exists()  # an earlier analysis's
    assert label_slug("Pleural Effusion") == "pleural-effusion"
    assert label_slug("../../x") == "x"


def test_overlays_are_small_with_the_pictures_aspect(tmp_path: Path) -> None:
    from workers.previews import OVERLAY_SIDE, overlay_shape

    assert overlay_shape((2500, 2048)) == (OVERLAY_SIDE, 210)
    spool = Spool(tmp_path / "spool")
    source = spool.instance_path("1.2.3", "1.2.3.1")
    spool.write_atomically(source, [b"dicom"])
    hot = np.zeros(overlay_shape((2000, 1600)), dtype=np.float32)
    hot[50:100, 50:100] = 1.0
    write_previews(spool, spool.relative(source), _analysed({"Pneumothorax": hot}))
    with Image.open(source.parent / "previews" / source.stem / "heatmap-pneumothorax.png") as png:
        assert png.mode == "P" and png.size == (205, 256)
        assert np.asarray(png.convert("RGBA"))[75, 75, 3] > 100
        assert np.asarray(png.convert("RGBA"))[0, 0, 3] == 0
