"""One radiograph through the model: pixels in, findings, score and heatmap out (as data).

decode -> displayed image -> square crop/pad -> resize -> value range -> ensemble ->
Grad-CAM for every positive finding and the top k -> heatmaps and hottest regions back in source
geometry. The SC heatmap shows the finding furthest above its operating point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import Dataset

from cxr_node.jobs import Finding, ImageAnalysis, Region
from cxr_node.settings import Settings
from workers import pixels, preprocess, previews, scoring
from workers.batching import InferenceBatcher, default_max_batch
from workers.encode.sr import identity_uid
from workers.ensemble import Ensemble

REGION_LEVEL = 0.6
"""Fraction of the heatmap peak that bounds the hottest region."""


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


class Analyzer:
    """Holds the warm ensemble and the analysis options of one worker process."""

    def __init__(self, settings: Settings, ensemble: Ensemble | None = None) -> None:
        self.ensemble = ensemble or Ensemble.from_settings(settings)
        self.top_k = settings.gradcam_top_k
        self.critical_findings = list(settings.critical_findings)
        self.score_method = settings.abnormality_score
        self.min_grey_levels = settings.eligibility.min_grey_levels
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

    def model_input(self, image: np.ndarray) -> tuple[torch.Tensor, pixels.SquareBox]:
        """The network's input tensor (1, C, S, S) and where it sits in the source image."""
        prep = self.ensemble.preprocessing
        square, box = preprocess.model_square(image, prep)
        return preprocess.network_input(torch.from_numpy(square)[None, None], prep), box

    def analyse(self, dataset: Dataset) -> AnalysedImage:
        """Analyse one decoded-on-demand DICOM image; RejectedInput says why it cannot be."""
        sop_instance_uid = identity_uid(dataset, "SOPInstanceUID")  # what the analysis is of
        image = pixels.displayed_image(dataset, self.min_grey_levels)
        batch, box = self.model_input(image)
        inference = self.batcher.infer(batch)
        predictions = inference.predictions
        # Ranked by how far each is above (or below) its own operating point.
        ranked = sorted(
            predictions,
            key=lambda p: scoring.normalised_probability(p.probability, p.threshold),
            reverse=True,
        )
        positives = [p for p in ranked if p.positive]
        explained = list({p.label: p for p in positives + ranked[: self.top_k]}.values())
        maps = self.ensemble.gradcam(inference, [p.label for p in explained])
        size = self.ensemble.preprocessing.size
        regions = {label: to_source_region(m, box, size, image.shape) for label, m in maps.items()}
        findings = [
            Finding(
                label=p.label,
                code=p.code,
                probability=round(p.probability, 6),
                threshold=round(p.threshold, 6),
                positive=p.positive,
                region=regions.get(p.label),
            )
            for p in predictions
        ]
        analysis = ImageAnalysis(
            sop_instance_uid=sop_instance_uid,
            findings=findings,
            abnormality_score=round(scoring.abnormality_score(findings, self.score_method), 6),
            priority=scoring.priority(findings, self.critical_findings),
            model=self.ensemble.info,
        )
        picture = previews.picture_of(image)
        heatmap = None
        if positives:
            at_picture = scaled_box(box, picture.shape[0] / image.shape[0])
            heatmap = to_source_geometry(maps[positives[0].label], at_picture, picture.shape)
        shape = previews.overlay_shape(image.shape)
        small = scaled_box(box, shape[0] / image.shape[0])
        overlays = {label: to_source_geometry(m, small, shape) for label, m in maps.items()}
        return AnalysedImage(
            analysis=analysis,
            picture=picture,
            source_shape=(image.shape[0], image.shape[1]),
            heatmap=heatmap,
            overlays=overlays,
        )


def scaled_box(box: pixels.SquareBox, scale: float) -> pixels.SquareBox:
    """The model's square in an image scaled by ``scale`` (a picture of the source)."""
    if scale == 1.0:
        return box
    return pixels.SquareBox(
        round(box.x0 * scale), round(box.y0 * scale), max(1, round(box.side * scale))
    )


def to_source_geometry(
    heatmap: np.ndarray, box: pixels.SquareBox, shape: tuple[int, ...]
) -> np.ndarray:
    """Resize a model-resolution map to the square box and place it in the source image."""
    tensor = torch.from_numpy(np.ascontiguousarray(heatmap))[None, None]
    square = F.interpolate(tensor, size=(box.side, box.side), mode="bilinear", align_corners=False)
    placed = pixels.paste_square(square[0, 0].numpy(), box, shape[0], shape[1])
    return np.clip(placed, 0.0, 1.0)


def to_source_region(
    heatmap: np.ndarray, box: pixels.SquareBox, size: int, shape: tuple[int, ...]
) -> Region | None:
    """The hottest region of a model-resolution map, as a box in source pixel coordinates."""
    region = hottest_region(heatmap)
    if region is None:
        return None
    scale = box.side / size
    height, width = shape[0], shape[1]
    return Region(
        x_min=min(max(box.x0 + region.x_min * scale, 0.0), width),
        y_min=min(max(box.y0 + region.y_min * scale, 0.0), height),
        x_max=min(max(box.x0 + region.x_max * scale, 0.0), width),
        y_max=min(max(box.y0 + region.y_max * scale, 0.0), height),
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
