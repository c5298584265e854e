"""Network architectures a bundle may declare (MONAI DenseNets, 2D)."""

from __future__ import annotations

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
