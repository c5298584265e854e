"""A weighted ensemble of DenseNets from model bundles, with Grad-CAM per finding.

Each label's probability is the weighted average over the members that have the label; its
threshold is the weighted average of those members' thresholds.

Grad-CAM (Selvaraju et al. 2017) weights the target layer's activation maps A_k by the mean
gradient of the class score, alpha_k = mean(dy_c/dA_k). Our networks end in global average
pooling and one linear layer (MONAI DenseNet ``class_layers``: relu, pool, flatten, out), so
dy_c/dA_k is w_ck/(H*W) everywhere and Grad-CAM equals relu(sum_k w_ck A_k) up to a positive
factor: one forward pass gives every finding's map, with no backward pass. A test checks that
this matches MONAI's ``GradCAM`` on a DenseNet-121. Maps are averaged over members (each scaled
to peak 1) and scaled to [0, 1] with hot = evidence.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.uid import generate_uid

import cxr_node
from cxr_node.errors import ModelBundleError
from cxr_node.jobs import CodedConcept, ModelInfo, ModelMember
from cxr_node.settings import EnsembleMember, Settings
from workers.bundles import Bundle, list_bundles, read_bundle
from workers.ensemble_config import read_ensemble_config
from workers.networks import build_network, forward_with_activation

log = logging.getLogger(__name__)


@dataclass
class LoadedMember:
    """One network, on its device, ready for inference."""

    bundle: Bundle
    weight: float
    network: torch.nn.Module
    label_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.label_index = self.bundle.metadata.label_outputs()


@dataclass(frozen=True)
class LabelPrediction:
    """Ensemble output for one label."""

    label: str
    code: CodedConcept
    probability: float
    threshold: float

    @property
    def positive(self) -> bool:
        """At or above the operating point."""
        return self.probability >= self.threshold


@dataclass
class Inference:
    """One forward pass of every member: predictions and what Grad-CAM needs."""

    predictions: list[LabelPrediction]
    input_size: tuple[int, int]
    activations: list[torch.Tensor]  # per member: (channels, h, w) at the target layer


def select_device(preference: str) -> torch.device:
    """CUDA when asked for or available (``auto``), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def class_weights(network: torch.nn.Module) -> torch.Tensor:
    """The final linear layer's weights (classes, channels) that follow global pooling."""
    weight = network.get_submodule("class_layers.out").weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach()


class Ensemble:
    """Loaded once per worker process and kept warm."""

    def __init__(
        self,
        members: list[LoadedMember],
        device: torch.device,
        thresholds: dict[str, float] | None = None,
        config_version: str | None = None,
        bf16: bool = False,
    ) -> None:
        if not members:
            raise ModelBundleError("the ensemble has no members")
        self.members = members
        self.device = device
        self.bf16 = bf16 and device.type == "cuda" and _bf16_supported()
        """bf16 autocast for the forward pass (CUDA only, ``inference_bf16``)."""
        first = members[0].bundle.metadata.preprocessing
        if any(m.bundle.metadata.preprocessing != first for m in members):
            raise ModelBundleError("ensemble members must declare the same preprocessing")
        self.preprocessing = first
        self.labels: list[tuple[str, CodedConcept]] = []
        for member in members:
            for spec in member.bundle.metadata.labels:
                if spec.name not in {name for name, _ in self.labels}:
                    self.labels.append((spec.name, spec.code))
        self.threshold_overrides = dict(thresholds or {})
        unknown = sorted(set(self.threshold_overrides) - {name for name, _ in self.labels})
        if unknown:
            raise ModelBundleError(f"thresholds for labels no member has: {', '.join(unknown)}")
        self.config_version = config_version
        self.info = self._describe()

    @classmethod
    def from_settings(cls, settings: Settings) -> Ensemble:
        """Load the configured bundles (the ``ensemble`` setting, else ``ensemble.json`` in the
        models folder, else every installed bundle with weight 1) and verify their weights."""
        config = None if settings.ensemble else read_ensemble_config(settings.models_path)
        configured = (
            settings.ensemble
            or (config.members if config is not None else None)
            or [EnsembleMember(bundle=b.path.name) for b in list_bundles(settings.models_path)]
        )
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
            members.append(LoadedMember(bundle, entry.weight, load_network(bundle, device)))
            log.info("loaded model %s on %s", bundle, device)
        if config is not None:
            log.info("ensemble configuration version %s", config.version)
            return cls(members, device, config.thresholds, config.version, settings.inference_bf16)
        return cls(members, device, bf16=settings.inference_bf16)

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
        if self.config_version is not None or self.threshold_overrides:
            overrides = ",".join(f"{k}={v}" for k, v in sorted(self.threshold_overrides.items()))
            fingerprint.append(f"ensemble:{self.config_version}:{overrides}")
        digest = hashlib.sha256("|".join(fingerprint).encode()).hexdigest()[:12]
        name = "cxr-node DenseNet ensemble" + (" DEMO (not trained)" if self.demo else "")
        return ModelInfo(
            name=name,
            version=f"{cxr_node.__version__}/{digest}",
            demo=self.demo,
            members=members,
            device_uid=generate_uid(entropy_srcs=fingerprint),
        )

    @torch.inference_mode()
    def member_probabilities(self, batch: torch.Tensor) -> list[np.ndarray]:
        """Each member's sigmoid outputs (B, outputs) for a batch, without activations."""
        batch = batch.to(self.device)
        return [
            torch.sigmoid(member.network(batch)).float().cpu().numpy() for member in self.members
        ]

    def combine(self, member_outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's probabilities (B, labels) and thresholds (labels,) in ``self.labels``
        order: per label, the weighted average over the members that have it; the threshold is
        the ensemble configuration's, else the weighted average of the members' thresholds."""
        batch_size = member_outputs[0].shape[0]
        sums = np.zeros((batch_size, len(self.labels)), dtype=np.float64)
        threshold_sums = np.zeros(len(self.labels), dtype=np.float64)
        weights = np.zeros(len(self.labels), dtype=np.float64)
        column = {name: index for index, (name, _) in enumerate(self.labels)}
        for member, outputs in zip(self.members, member_outputs, strict=True):
            for spec in member.bundle.metadata.labels:
                index = column[spec.name]
                sums[:, index] += member.weight * outputs[:, member.label_index[spec.name]]
                threshold_sums[index] += member.weight * spec.threshold
                weights[index] += member.weight
        thresholds = threshold_sums / weights
        for name, value in self.threshold_overrides.items():
            thresholds[column[name]] = value
        return sums / weights, thresholds

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> Inference:
        """One forward pass per member (batch of one): probabilities and target activations."""
        return self.infer_many(batch)[0]

    @torch.inference_mode()
    def infer_many(self, batch: torch.Tensor) -> list[Inference]:
        """One forward pass per member for a batch of images (B, C, S, S): each image's
        probabilities and target activations, as :meth:`infer` gives them one by one."""
        batch = to_device(batch, self.device)
        activations: list[torch.Tensor] = []
        outputs: list[np.ndarray] = []
        for member in self.members:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits, activation = forward_with_activation(member.network, batch)
            activations.append(activation.float())
            outputs.append(torch.sigmoid(logits).float().cpu().numpy())
        probabilities, thresholds = self.combine(outputs)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        return [
            Inference(
                predictions=[
                    LabelPrediction(
                        label=name,
                        code=code,
                        probability=float(probabilities[item, index]),
                        threshold=float(thresholds[index]),
                    )
                    for index, (name, code) in enumerate(self.labels)
                ],
                input_size=size,
                activations=[activation[item] for activation in activations],
            )
            for item in range(int(batch.shape[0]))
        ]

    @torch.inference_mode()
    def gradcam(self, inference: Inference, labels: Sequence[str]) -> dict[str, np.ndarray]:
        """Grad-CAM at input resolution for each label, in [0, 1], hot = evidence."""
        maps: dict[str, np.ndarray] = {}
        for label in labels:
            total: torch.Tensor | None = None
            weights = 0.0
            for member, activation in zip(self.members, inference.activations, strict=True):
                if label not in member.label_index:
                    continue
                w = class_weights(member.network)[member.label_index[label]].float()
                cam = torch.relu(torch.einsum("c,chw->hw", w, activation))
                peak = float(cam.max())
                cam = cam / peak if peak > 0 else cam
                total = member.weight * cam if total is None else total + member.weight * cam
                weights += member.weight
            if total is None:
                maps[label] = np.zeros(inference.input_size, dtype=np.float32)
                continue
            upsampled = F.interpolate(
                (total / weights)[None, None],
                size=inference.input_size,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            peak = float(upsampled.max())
            scaled = upsampled / peak if peak > 0 else upsampled
            maps[label] = scaled.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)
        return maps


def load_network(bundle: Bundle, device: torch.device) -> torch.nn.Module:
    """Build the bundle's architecture and load its (already verified) weights; on CUDA in
    channels_last memory format, which cuDNN's convolutions prefer."""
    meta = bundle.metadata
    network = build_network(meta.architecture, meta.preprocessing.channels, meta.output_count())
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    network.load_state_dict(state)
    if device.type == "cuda":
        return network.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    return network.to(device).eval()


def _bf16_supported() -> bool:
    """Whether this CUDA device computes in bf16 (autocast raises on every pass otherwise);
    ``inference_bf16`` on one that does not is logged and left off."""
    supported = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if not supported:
        log.warning("inference_bf16: this CUDA device has no bf16; inference stays float32")
    return supported


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the ensemble's device: on CUDA copied from pinned memory without waiting
    (the copy overlaps the host's work until the first kernel needs it) and channels_last;
    elsewhere as it is."""
    if device.type != "cuda" or batch.device.type == "cuda":
        return batch.to(device)
    pinned = batch.contiguous().pin_memory()
    return pinned.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
