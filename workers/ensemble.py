"""A weighted ensemble of DenseNets from model bundles, with Grad-CAM per finding.

Each label's probability is the weighted average over the members that have the label; its
threshold is the weighted average of those members' thresholds. Grad-CAM (MONAI) is computed per
member and averaged the same way, scaled so that hot means evidence.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from monai.visualize import GradCAM
from pydicom.uid import generate_uid

import cxr_node
from cxr_node.errors import ModelBundleError
from cxr_node.jobs import CodedConcept, ModelInfo, ModelMember
from cxr_node.settings import EnsembleMember, Settings
from workers.bundles import Bundle, list_bundles, read_bundle
from workers.networks import GRADCAM_LAYER, build_network

log = logging.getLogger(__name__)


@dataclass
class LoadedMember:
    """One network, on its device, ready for inference."""

    bundle: Bundle
    weight: float
    network: torch.nn.Module
    gradcam: GradCAM
    label_index: dict[str, int]


@dataclass(frozen=True)
class LabelPrediction:
    """Ensemble output for one label."""

    label: str
    code: CodedConcept
    probability: float
    threshold: float


def select_device(preference: str) -> torch.device:
    """CUDA when asked for or available (``auto``), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _identity(cam: torch.Tensor) -> torch.Tensor:
    return cam


class Ensemble:
    """Loaded once per worker process and kept warm."""

    def __init__(self, members: list[LoadedMember], device: torch.device) -> None:
        if not members:
            raise ModelBundleError("the ensemble has no members")
        self.members = members
        self.device = device
        first = members[0].bundle.metadata.preprocessing
        if any(m.bundle.metadata.preprocessing != first for m in members):
            raise ModelBundleError("ensemble members must declare the same preprocessing")
        self.preprocessing = first
        self.labels: list[tuple[str, CodedConcept]] = []
        for member in members:
            for spec in member.bundle.metadata.labels:
                if spec.name not in {name for name, _ in self.labels}:
                    self.labels.append((spec.name, spec.code))
        self.info = self._describe()

    @classmethod
    def from_settings(cls, settings: Settings) -> Ensemble:
        """Load the configured bundles (or every installed one) and verify their weights."""
        configured = settings.ensemble or [
            EnsembleMember(bundle=b.path.name) for b in list_bundles(settings.models_path)
        ]
        if not configured:
            raise ModelBundleError(
                f"no model bundles in {settings.models_path}; run `cxr-node models init-demo` "
                "for the DEMO model or import trained weights"
            )
        device = select_device(settings.device)
        members = []
        for entry in configured:
            path = settings.models_path / entry.bundle
            bundle = read_bundle(path if path.is_dir() else type(path)(entry.bundle))
            meta = bundle.metadata
            network = build_network(
                meta.architecture, meta.preprocessing.channels, len(meta.labels)
            )
            state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
            network.to(device).eval()
            members.append(
                LoadedMember(
                    bundle=bundle,
                    weight=entry.weight,
                    network=network,
                    gradcam=GradCAM(network, GRADCAM_LAYER, postprocessing=_identity),
                    label_index={spec.name: i for i, spec in enumerate(meta.labels)},
                )
            )
            log.info("loaded model %s on %s", bundle, device)
        return cls(members, device)

    @property
    def demo(self) -> bool:
        """True when any member is a DEMO bundle: then every output says DEMO."""
        return any(m.bundle.metadata.demo for m in self.members)

    def _describe(self) -> ModelInfo:
        members = [
            ModelMember(
                name=m.bundle.metadata.name,
                version=m.bundle.metadata.version,
                sha256=m.bundle.metadata.weights_sha256,
                weight=m.weight,
            )
            for m in self.members
        ]
        fingerprint = sorted(f"{m.name}:{m.version}:{m.sha256}:{m.weight}" for m in members)
        digest = hashlib.sha256("|".join(fingerprint).encode()).hexdigest()[:12]
        name = "cxr-node DenseNet ensemble" + (" DEMO (not trained)" if self.demo else "")
        return ModelInfo(
            name=name,
            version=f"{cxr_node.__version__}/{digest}",
            demo=self.demo,
            members=members,
            device_uid=generate_uid(entropy_srcs=fingerprint),
        )

    @torch.no_grad()
    def predict(self, batch: torch.Tensor) -> list[LabelPrediction]:
        """Probabilities for one image (batch of one), averaged over members by weight."""
        batch = batch.to(self.device)
        sums: dict[str, list[float]] = {}
        for member in self.members:
            probabilities = torch.sigmoid(member.network(batch))[0].float().cpu().numpy()
            for spec in member.bundle.metadata.labels:
                p = float(probabilities[member.label_index[spec.name]])
                acc = sums.setdefault(spec.name, [0.0, 0.0, 0.0])
                acc[0] += member.weight * p
                acc[1] += member.weight * spec.threshold
                acc[2] += member.weight
        return [
            LabelPrediction(
                label=name,
                code=code,
                probability=sums[name][0] / sums[name][2],
                threshold=sums[name][1] / sums[name][2],
            )
            for name, code in self.labels
        ]

    def gradcam(self, batch: torch.Tensor, label: str) -> np.ndarray:
        """Grad-CAM for one label at input resolution, in [0, 1] with hot = evidence."""
        batch = batch.to(self.device)
        total: np.ndarray | None = None
        weights = 0.0
        with torch.enable_grad():
            for member in self.members:
                if label not in member.label_index:
                    continue
                cam = member.gradcam(batch, class_idx=member.label_index[label])
                cam_map = cam[0, 0].detach().float().cpu().numpy()
                peak = float(cam_map.max())
                if peak > 0:
                    cam_map = cam_map / peak
                total = (
                    member.weight * cam_map if total is None else total + member.weight * cam_map
                )
                weights += member.weight
        if total is None:
            return np.zeros(tuple(batch.shape[-2:]), dtype=np.float32)
        total = total / weights
        peak = float(total.max())
        return (total / peak if peak > 0 else total).astype(np.float32)
