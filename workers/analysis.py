"""One radiograph through the model: pixels in, findings, score and heatmap out (as data).

The analysis stages of :mod:`workers.pipeline`: preprocess (decode -> displayed image -> square
crop/pad -> resize -> value range; the 8-bit picture), infer (the ensemble, batched), explain
(Grad-CAM for every positive finding and the top k -> hottest regions in source pixels, maps in
the pictures' geometry), score (findings, abnormality score, priority). The SC heatmap shows the
finding furthest above its operating point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import Dataset

from cxr_node.jobs import Finding, ImageAnalysis, Region
from cxr_node.settings import Settings
from workers import geometry, pixels, preprocess, previews, scoring
from workers.batching import InferenceBatcher, default_max_batch
from workers.encode.header import identity_uid
from workers.ensemble import Ensemble, Inference

REGION_LEVEL = 0.6
"""Fraction of the heatmap peak that bounds the hottest region."""
REDUCED_MIN_SIDE = 896
"""With ``jpeg2000_reduced_decode``, a JPEG 2000 image is decoded at the coarsest resolution
level whose longer side is at least this: the network reads far fewer pixels anyway, and the web
picture and the SC (at most 1024 pixels a side, not for diagnosis) are enlarged by at most 14 %.
Off by default: the display is normalised by its range after the window, and a reduced level's
range differs (averaging narrows it; the wavelet's ringing at a hard edge widens it), so the
model's input differs slightly from a full decode's, and from what ``models evaluate`` sees."""


@dataclass
class AnalysedImage:
    """The analysis of one image, with what the encoders need to draw it."""

    analysis: ImageAnalysis
    picture: np.ndarray
    """The radiograph as displayed, 8-bit, scaled to fit the web picture
    (:func:`workers.previews.picture_of`); the SC is drawn from it too."""
    source_shape: tuple[int, int]
    """The analysed image's (rows, columns): the frame of the findings' regions."""
    heatmap: np.ndarray | None
    """The SC's map (the most positive finding's), in the picture's geometry."""
    overlays: dict[str, np.ndarray] = field(default_factory=dict)
    """Each explained finding's map with the web app's picture's aspect, small
    (:func:`workers.previews.overlay_shape`)."""


@dataclass
class Prepared:
    """An image after preprocessing: the network's input and the picture to draw on."""

    sop_instance_uid: str
    model_input: torch.Tensor
    box: geometry.SquareBox
    """Where the network's square sits in the analysed image."""
    image_shape: tuple[int, int]
    """The analysed image's (rows, columns): the source's, or fewer at a reduced JPEG 2000
    resolution level."""
    source_shape: tuple[int, int]
    """The source's (rows, columns): the frame of the findings' regions."""
    picture: np.ndarray


@dataclass
class Explanation:
    """Grad-CAM of the explained findings: regions in source pixels, the SC's map in the
    picture's geometry, the web app's small overlays."""

    regions: dict[str, Region | None]
    heatmap: np.ndarray | None
    overlays: dict[str, np.ndarray]


class Analyzer:
    """Holds the warm ensemble and the analysis options of one worker process."""

    def __init__(self, settings: Settings, ensemble: Ensemble | None = None) -> None:
        self.ensemble = ensemble or Ensemble.from_settings(settings)
        self.top_k = settings.gradcam_top_k
        self.critical_findings = list(settings.critical_findings)
        self.score_method = settings.abnormality_score
        self.min_grey_levels = settings.eligibility.min_grey_levels
        self.reduced_min_side = REDUCED_MIN_SIDE if settings.jpeg2000_reduced_decode else None
        self._max_batch = settings.max_batch
        self._max_batch_wait_ms = settings.max_batch_wait_ms
        self.batch_for(settings.analysis_concurrency or 1)

    def batch_for(self, concurrency: int) -> None:
        """Batch inference for ``concurrency`` analyses at once (the worker's, once known)."""
        self.batcher = InferenceBatcher(
            self.ensemble,
            default_max_batch(self._max_batch, self.ensemble.device, concurrency),
            self._max_batch_wait_ms,
        )

    def model_input(self, image: np.ndarray) -> tuple[torch.Tensor, geometry.SquareBox]:
        """The network's input tensor (1, C, S, S) and where it sits in the source image."""
        prep = self.ensemble.preprocessing
        square, box = preprocess.model_square(image, prep)
        return preprocess.network_input(torch.from_numpy(square)[None, None], prep), box

    def analyse(self, dataset: Dataset) -> AnalysedImage:
        """Analyse one decoded-on-demand DICOM image; RejectedInput says why it cannot be.

        The analysis stages of :mod:`workers.pipeline`, in order, for callers that write
        nothing (or their own files)."""
        prepared = self.preprocess(dataset)
        inference = self.infer(prepared)
        return self.score(prepared, inference, self.explain(prepared, inference))

    def preprocess(self, dataset: Dataset) -> Prepared:
        """Pixels to what the later stages need: the displayed image (PS3.3 C.11 LUTs) as the
        network's input and as the 8-bit picture; the full-size image is not kept."""
        sop_instance_uid = identity_uid(dataset, "SOPInstanceUID")  # what the analysis is of
        image = pixels.displayed_image(dataset, self.min_grey_levels, self.reduced_min_side)
        source_shape = (int(dataset.Rows), int(dataset.Columns))  # valid: the image decoded
        batch, box = self.model_input(image)
        return Prepared(
            sop_instance_uid=sop_instance_uid,
            model_input=batch,
            box=box,
            image_shape=(image.shape[0], image.shape[1]),
            source_shape=source_shape,
            picture=previews.picture_of(image, source_shape),
        )

    def infer(self, prepared: Prepared) -> Inference:
        """The ensemble's forward pass, batched with other analyses' images when configured."""
        return self.batcher.infer(prepared.model_input)

    def explain(self, prepared: Prepared, inference: Inference) -> Explanation:
        """Grad-CAM for every positive finding and the top k (ranked by how far each is above,
        or below, its own operating point), with the hottest regions in source pixels."""
        ranked = sorted(
            inference.predictions,
            key=lambda p: scoring.normalised_probability(p.probability, p.threshold),
            reverse=True,
        )
        positives = [p for p in ranked if p.positive]
        explained = list({p.label: p for p in positives + ranked[: self.top_k]}.values())
        maps = self.ensemble.gradcam(inference, [p.label for p in explained])
        size = self.ensemble.preprocessing.size
        box, shape = prepared.box, prepared.image_shape
        regions = {
            label: to_source_region(m, box, size, shape, prepared.source_shape)
            for label, m in maps.items()
        }
        heatmap = None
        if positives:
            picture_shape = (prepared.picture.shape[0], prepared.picture.shape[1])
            at_picture = geometry.scaled_box(box, max(picture_shape) / max(shape))
            heatmap = to_source_geometry(maps[positives[0].label], at_picture, picture_shape)
        small_shape = previews.overlay_shape(prepared.source_shape)
        small = geometry.scaled_box(box, max(small_shape) / max(shape))
        overlays = {label: to_source_geometry(m, small, small_shape) for label, m in maps.items()}
        return Explanation(regions=regions, heatmap=heatmap, overlays=overlays)

    def score(
        self, prepared: Prepared, inference: Inference, explanation: Explanation
    ) -> AnalysedImage:
        """Findings at their operating points, the abnormality score and the triage priority."""
        findings = [
            Finding(
                label=p.label,
                code=p.code,
                probability=round(p.probability, 6),
                threshold=round(p.threshold, 6),
                positive=p.positive,
                region=explanation.regions.get(p.label),
            )
            for p in inference.predictions
        ]
        analysis = ImageAnalysis(
            sop_instance_uid=prepared.sop_instance_uid,
            findings=findings,
            abnormality_score=round(scoring.abnormality_score(findings, self.score_method), 6),
            priority=scoring.priority(findings, self.critical_findings),
            model=self.ensemble.info,
        )
        return AnalysedImage(
            analysis=analysis,
            picture=prepared.picture,
            source_shape=prepared.source_shape,
            heatmap=explanation.heatmap,
            overlays=explanation.overlays,
        )


def to_source_geometry(
    heatmap: np.ndarray, box: geometry.SquareBox, shape: tuple[int, ...]
) -> np.ndarray:
    """Resize a model-resolution map to the square box and place it in the source image."""
    tensor = torch.from_numpy(np.ascontiguousarray(heatmap))[None, None]
    square = F.interpolate(tensor, size=(box.side, box.side), mode="bilinear", align_corners=False)
    placed = geometry.paste_square(square[0, 0].numpy(), box, shape[0], shape[1])
    return np.clip(placed, 0.0, 1.0)


def to_source_region(
    heatmap: np.ndarray,
    box: geometry.SquareBox,
    size: int,
    shape: tuple[int, ...],
    source_shape: tuple[int, ...] | None = None,
) -> Region | None:
    """The hottest region of a model-resolution map, as a box in source pixel coordinates
    (``box`` and ``shape`` are the analysed image's; ``source_shape`` the source's when the
    image was decoded at a reduced resolution)."""
    region = hottest_region(heatmap)
    if region is None:
        return None
    scale = box.side / size
    height, width = shape[0], shape[1]
    source_height, source_width = source_shape[:2] if source_shape else (height, width)
    x_scale, y_scale = source_width / width, source_height / height

    def x(value: float) -> float:
        return min(max((box.x0 + value * scale) * x_scale, 0.0), source_width)

    def y(value: float) -> float:
        return min(max((box.y0 + value * scale) * y_scale, 0.0), source_height)

    return Region(
        x_min=x(region.x_min), y_min=y(region.y_min), x_max=x(region.x_max), y_max=y(region.y_max)
    )


def hottest_region(heatmap: np.ndarray, level: float = REGION_LEVEL) -> Region | None:
    """Bounding box (column, row, in the map's pixels) of where it is above ``level`` of peak."""
    peak = float(heatmap.max())
    if peak <= 0:
        return None
    rows, columns = np.nonzero(heatmap >= level * peak)
    return Region(
        x_min=float(columns.min()),
        y_min=float(rows.min()),
        x_max=float(columns.max() + 1),
        y_max=float(rows.max() + 1),
    )
