"""A served model's answers on labelled data: each member's and the ensemble's, computed as the
node computes them (:class:`workers.ensemble.Ensemble`: the same networks, preprocessing,
weighted average and thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr_node.errors import ModelBundleError
from cxr_node.settings import EnsembleMember
from workers.bundles import read_bundle
from workers.ensemble import Ensemble, LoadedMember, load_network, select_device
from workers.ensemble_config import ENSEMBLE_FILE, EnsembleConfig, read_ensemble_config
from workers.preprocess import network_input
from workers.training.datasets import LabelledData
from workers.training.images import LoadedImages, label_matrix, load_images


@dataclass
class MemberAnswers:
    """One member's probabilities and thresholds on the labels it has (``labels`` order)."""

    name: str
    version: str
    demo: bool
    labels: list[str]
    scores: np.ndarray
    thresholds: list[float]


@dataclass
class Predictions:
    """Truth and answers on the evaluated labels (those both the model and the data have)."""

    labels: list[str]
    truth: np.ndarray
    scores: np.ndarray
    thresholds: list[float]
    members: list[MemberAnswers]
    images: LoadedImages
    ensemble: Ensemble


def load_model(
    paths: Sequence[Path], weights: Sequence[float] | None = None, device: str = "auto"
) -> tuple[Ensemble, EnsembleConfig | None, Path | None]:
    """Bundles as an ensemble: one or more bundle folders (weights default 1), or one models
    folder holding ``ensemble.json`` (its members, weights and thresholds). Also returns that
    configuration and its folder when there is one."""
    chosen = select_device(device)
    config: EnsembleConfig | None = None
    folder: Path | None = None
    if len(paths) == 1 and (paths[0] / ENSEMBLE_FILE).is_file():
        folder = paths[0]
        config = read_ensemble_config(folder)
        assert config is not None
        entries = list(config.members)
    else:
        if weights is not None and len(weights) != len(paths):
            raise ModelBundleError(f"{len(paths)} bundles but {len(weights)} weights")
        entries = [
            EnsembleMember(bundle=str(path), weight=weights[i] if weights else 1.0)
            for i, path in enumerate(paths)
        ]
    members = []
    for entry in entries:
        path = Path(entry.bundle)
        if folder is not None and not path.is_absolute():
            path = folder / path
        bundle = read_bundle(path)
        members.append(LoadedMember(bundle, entry.weight, load_network(bundle, chosen)))
    if config is not None:
        return Ensemble(members, chosen, config.thresholds, config.version), config, folder
    return Ensemble(members, chosen), None, None


def evaluated_labels(ensemble: Ensemble, data: LabelledData) -> list[str]:
    """The labels both the model and the data have, in the model's order."""
    have = set(data.labels)
    labels = [name for name, _ in ensemble.labels if name in have]
    if not labels:
        raise ModelBundleError(
            f"the model's labels ({', '.join(n for n, _ in ensemble.labels)}) and the data's "
            f"({', '.join(data.labels)}) have none in common"
        )
    return labels


@torch.inference_mode()
def predict_data(
    ensemble: Ensemble,
    data: LabelledData,
    batch_size: int = 16,
    progress: bool = True,
    images: LoadedImages | None = None,
) -> Predictions:
    """Every member's and the ensemble's probabilities on the data's readable images."""
    labels = evaluated_labels(ensemble, data)
    prep = ensemble.preprocessing
    if images is None:
        images = load_images(data.samples, prep, progress=progress)
    if not images.samples:
        raise ModelBundleError(f"{data.source}: no image could be read as the node reads it")
    outputs: list[list[np.ndarray]] = [[] for _ in ensemble.members]
    for squares in images.batches(batch_size, progress):
        batch = network_input(squares, prep)
        for member_outputs, answer in zip(
            outputs, ensemble.member_probabilities(batch), strict=True
        ):
            member_outputs.append(answer)
    stacked = [np.concatenate(o) if o else np.zeros((0, 1)) for o in outputs]
    combined, thresholds = ensemble.combine(stacked)
    column = {name: index for index, (name, _) in enumerate(ensemble.labels)}
    columns = [column[label] for label in labels]
    return Predictions(
        labels=labels,
        truth=label_matrix(images.samples, labels),
        scores=combined[:, columns],
        thresholds=[float(thresholds[c]) for c in columns],
        members=[
            _member_answers(m, o, labels) for m, o in zip(ensemble.members, stacked, strict=True)
        ],
        images=images,
        ensemble=ensemble,
    )


def _member_answers(member: LoadedMember, outputs: np.ndarray, labels: list[str]) -> MemberAnswers:
    meta = member.bundle.metadata
    specs = {spec.name: spec for spec in meta.labels}
    own = [label for label in labels if label in specs]
    return MemberAnswers(
        name=meta.name,
        version=meta.version,
        demo=meta.demo,
        labels=own,
        scores=outputs[:, [member.label_index[label] for label in own]],
        thresholds=[specs[label].threshold for label in own],
    )
