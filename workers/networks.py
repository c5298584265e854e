"""Network architectures a bundle may declare (MONAI DenseNets, 2D)."""

from __future__ import annotations

import torch
from torch import nn

GRADCAM_LAYER = "class_layers.relu"
"""The last feature activation of MONAI's DenseNets: the Grad-CAM target layer."""


def build_network(architecture: str, in_channels: int, out_channels: int) -> nn.Module:
    """A MONAI DenseNet with explicit arguments (no pretrained download, ever)."""
    from monai.networks.nets import DenseNet121, DenseNet169, DenseNet201

    classes = {"densenet121": DenseNet121, "densenet169": DenseNet169, "densenet201": DenseNet201}
    if architecture not in classes:
        raise ValueError(f"unknown architecture {architecture!r}")
    network: nn.Module = classes[architecture](
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, pretrained=False
    )
    return network


def forward_with_activation(
    network: nn.Module, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MONAI DenseNet's logits and its Grad-CAM target activation (``GRADCAM_LAYER``).

    The same computation as ``network(batch)`` (features, then ``class_layers``: relu, pool,
    flatten, out), step by step instead of through a forward hook: a hook is shared by every
    caller of the module, so two threads analysing at once would see each other's activations.
    """
    features = network.get_submodule("features")(batch)
    head = network.get_submodule("class_layers")
    activation = head.get_submodule("relu")(features)
    pooled = head.get_submodule("pool")(activation)
    logits = head.get_submodule("out")(head.get_submodule("flatten")(pooled))
    return logits, activation
