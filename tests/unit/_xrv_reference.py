"""A re-statement of torchxrayvision's DenseNet-121 (torchxrayvision 1.5.7, models.py,
Apache-2.0): same class names, module path, layer names and forward pass, so that a test can
write a weights file shaped like the published ones without torchxrayvision installed.
Weights here are random (synthetic); nothing of theirs is distributed.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

MODULE = "torchxrayvision.models"


class _DenseLayer(nn.Sequential):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module(
            "conv1", nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        )
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module(
            "conv2", nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([x, super().forward(x)], 1)


class _DenseBlock(nn.Sequential):
    def __init__(self, num_layers: int, num_input_features: int) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(num_input_features + i * 32, 32, 4))


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, 1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    def __init__(self, num_classes: int = 18, op_threshs: torch.Tensor | None = None) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(64)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))  # fmt: skip
        features = 64
        for i, layers in enumerate((6, 12, 24, 16)):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(layers, features))
            features += layers * 32
            if i != 3:
                self.features.add_module(f"transition{i + 1}", _Transition(features, features // 2))
                features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(features))
        self.classifier = nn.Linear(features, num_classes)
        self.register_buffer("op_threshs", op_threshs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features)
        out = F.adaptive_avg_pool2d(out, (1, 1)).view(features.size(0), -1)
        out = torch.sigmoid(self.classifier(out))
        if self.op_threshs is not None:
            out = op_norm(out, self.op_threshs)
        return out


def op_norm(outputs: torch.Tensor, op_threshs: torch.Tensor) -> torch.Tensor:
    """torchxrayvision's operating-point normalisation: threshold -> 0.5, NaN outputs -> 0.5."""
    thresholds = op_threshs.expand(outputs.shape[0], -1)
    normalised = torch.zeros_like(outputs) + 0.5
    below = (outputs < thresholds) & ~torch.isnan(thresholds)
    normalised[below] = outputs[below] / (thresholds[below] * 2)
    above = (outputs >= thresholds) & ~torch.isnan(thresholds)
    normalised[above] = 1.0 - ((1.0 - outputs[above]) / ((1 - thresholds[above]) * 2))
    return normalised


for _cls in (_DenseLayer, _DenseBlock, _Transition, DenseNet):
    _cls.__module__ = MODULE


def random_reference(num_classes: int = 18, seed: int = 0) -> DenseNet:
    """The network with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    network = DenseNet(num_classes)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
        network.classifier.weight.mul_(20.0)
    return network.eval()


@contextmanager
def importable_as_torchxrayvision() -> Iterator[None]:
    """While saving, make ``torchxrayvision.models`` resolve to these classes (pickle needs it)."""
    package = types.ModuleType("torchxrayvision")
    module = types.ModuleType(MODULE)
    for cls in (_DenseLayer, _DenseBlock, _Transition, DenseNet):
        setattr(module, cls.__name__, cls)
    saved = {name: sys.modules.get(name) for name in ("torchxrayvision", MODULE)}
    sys.modules["torchxrayvision"], sys.modules[MODULE] = package, module
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
