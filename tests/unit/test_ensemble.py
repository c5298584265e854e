"""The ensemble's Grad-CAM and the analysis invariants (workers.ensemble, workers.analysis).

Tiny networks on tiny inputs where a real DenseNet is not needed (as MONAI's own tests do);
synthetic images are made here and say so.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.visualize import GradCAM
from pydicom.uid import generate_uid
from torch import nn

from cxr_node.settings import load_settings
from tests.unit._synthetic import corpus_file, make_dx_chest
from workers.analysis import Analyzer
from workers.bundles import Bundle as ModelBundle
from workers.bundles import BundleMetadata, LabelSpec, Preprocessing
from workers.ensemble import Ensemble, LoadedMember
from workers.labels import code_for
from workers.networks import GRADCAM_LAYER, forward_with_activation


def _bundle(labels: list[str], size: int = 224) -> ModelBundle:
    metadata = BundleMetadata(
        name="test-network",
        version="0",
        description="synthetic test network",
        demo=True,
        architecture="densenet121",
        preprocessing=Preprocessing(size=size, channels=1, value_range=(-1024.0, 1024.0)),
        labels=[LabelSpec(name=n, code=code_for(n), threshold=0.5) for n in labels],
        weights_sha256="0" * 64,
    )
    return ModelBundle(path=Path("/nonexistent"), metadata=metadata)


def test_one_pass_gradcam_equals_monai_gradcam() -> None:
    torch.manual_seed(0)
    network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics and head
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    ensemble = Ensemble(
        [LoadedMember(_bundle(["A", "B", "C"], 128), 1.0, network)], torch.device("cpu")
    )
    batch = torch.rand(1, 1, 128, 128) * 2048 - 1024
    ours = ensemble.gradcam(ensemble.infer(batch), ["A", "B", "C"])
    reference = GradCAM(network, GRADCAM_LAYER, postprocessing=lambda cam: cam)
    for index, label in enumerate(["A", "B", "C"]):
        expected = reference(batch, class_idx=index)[0, 0].detach().numpy()
        if expected.max() > 0:
            expected = expected / expected.max()
        np.testing.assert_allclose(ours[label], expected, atol=1e-4)


class QuadrantNetwork(nn.Module):
    """Sees brightness: its only feature is the pooled positive intensity (synthetic test net)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.AvgPool2d(8)
        self.class_layers = nn.Sequential(
            OrderedDict(
                relu=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                out=nn.Linear(1, 2),
            )
        )
        with torch.no_grad():
            self.class_layers.out.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.class_layers.out.bias.copy_(torch.tensor([0.0, -5.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))


def _image_with_blob(rows: int, columns: int, row: int, column: int) -> pydicom.Dataset:
    """A synthetic dark, slightly noisy DX image (a flat one is refused as no radiograph) with
    one bright square: the planted evidence."""
    dataset = make_dx_chest(rows, columns)
    noise = np.random.default_rng(7).integers(0, 64, size=(rows, columns))
    pixels = (200 + noise).astype(np.uint16)
    pixels[row : row + 24, column : column + 24] = 4000
    dataset.PixelData = pixels.tobytes()
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in dataset:
            delattr(dataset, keyword)
    return dataset


@pytest.mark.parametrize(
    ("rows", "columns", "row", "column"),
    [(300, 240, 60, 50), (240, 300, 150, 200), (256, 256, 20, 200)],
    ids=["tall-top-left", "wide-bottom-right", "square-top-right"],
)
def test_heatmap_lights_the_planted_quadrant(
    rows: int, columns: int, row: int, column: int
) -> None:
    ensemble = Ensemble(
        [LoadedMember(_bundle(["Evidence", "Absent"]), 1.0, QuadrantNetwork())], torch.device("cpu")
    )
    settings = load_settings(data_dir=Path("/nonexistent"), gradcam_top_k=1)
    analysed = Analyzer(settings, ensemble).analyse(_image_with_blob(rows, columns, row, column))
    finding = {f.label: f for f in analysed.analysis.findings}["Evidence"]
    assert (
        finding.positive and not {f.label: f for f in analysed.analysis.findings}["Absent"].positive
    )
    assert analysed.heatmap is not None and analysed.heatmap.shape == (rows, columns)
    assert analysed.picture.shape == (rows, columns) and analysed.source_shape == (rows, columns)
    hot_row, hot_column = np.unravel_index(np.argmax(analysed.heatmap), analysed.heatmap.shape)
    assert row - 8 <= hot_row <= row + 32 and column - 8 <= hot_column <= column + 32
    region = finding.region
    assert region is not None
    # the box is around the blob, in source (column, row) coordinates: not mirrored or turned
    assert region.x_min <= column + 24 and region.x_max >= column
    assert region.y_min <= row + 24 and region.y_max >= row
    # the web app's overlay of the same map, scaled to fit 256 pixels, is hot in the same place
    overlay = analysed.overlays["Evidence"]
    scale = min(1.0, 256 / max(rows, columns))
    assert overlay.shape == (round(rows * scale), round(columns * scale))
    small_row, small_column = np.unravel_index(np.argmax(overlay), overlay.shape)
    assert abs(small_row - hot_row * scale) <= 32 * scale + 2
    assert abs(small_column - hot_column * scale) <= 32 * scale + 2
    assert region.x_max - region.x_min < columns / 2 and region.y_max - region.y_min < rows / 2


def _analyzer(models_dir: Path) -> Analyzer:
    return Analyzer(load_settings(data_dir=models_dir.parent, models_dir=models_dir))


def test_monochrome1_with_inverted_values_gives_the_same_probabilities(models_dir: Path) -> None:
    analyzer = _analyzer(models_dir)
    mono2 = make_dx_chest(320, 256)
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in mono2:
            delattr(mono2, keyword)
    mono1 = copy.deepcopy(mono2)
    mono1.SOPInstanceUID = generate_uid()
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.PresentationLUTShape = "INVERSE"
    stored = np.frombuffer(mono2.PixelData, dtype=np.uint16).reshape(320, 256)
    mono1.PixelData = (4095 - stored).astype(np.uint16).tobytes()
    first = analyzer.analyse(mono2).analysis.findings
    second = analyzer.analyse(mono1).analysis.findings
    np.testing.assert_allclose(
        [f.probability for f in first], [f.probability for f in second], atol=1e-5
    )


def test_real_monochrome1_radiograph_and_its_monochrome2_twin_agree(models_dir: Path) -> None:
    mono1 = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    top = (1 << int(mono1.BitsStored)) - 1
    mono2 = pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))
    mono2.PhotometricInterpretation = "MONOCHROME2"
    mono2.PixelData = (top - mono1.pixel_array).astype(mono1.pixel_array.dtype).tobytes()
    mono2.WindowCenter = top - float(mono1.WindowCenter) + 1  # the same window, mirrored
    mono2.SOPInstanceUID = generate_uid()
    analyzer = _analyzer(models_dir)
    first = analyzer.analyse(mono1).analysis.findings
    second = analyzer.analyse(mono2).analysis.findings
    np.testing.assert_allclose(
        [f.probability for f in first], [f.probability for f in second], atol=1e-3
    )


class FirstPixels(nn.Module):
    """Stands in for DenseNet features: one 4x4 channel of the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :4, :4]


class ConstantHead(nn.Module):
    """Outputs fixed logits whatever the image (synthetic test net with the expected head)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.features = FirstPixels()
        self.class_layers = nn.Sequential(
            OrderedDict(
                relu=nn.ReLU(),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                out=nn.Linear(1, len(logits)),
            )
        )
        with torch.no_grad():
            self.class_layers.out.weight.zero_()
            self.class_layers.out.bias.copy_(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))


def test_labels_are_averaged_over_the_members_that_have_them_by_weight() -> None:
    logit = float(torch.logit(torch.tensor(0.8)))
    first = LoadedMember(_bundle(["A", "B"]), 3.0, ConstantHead([logit, 0.0]))  # A 0.8, B 0.5
    second = LoadedMember(_bundle(["B"]), 1.0, ConstantHead([logit]))  # B 0.8
    predictions = {
        p.label: p
        for p in Ensemble([first, second], torch.device("cpu"))
        .infer(torch.zeros(1, 1, 224, 224))
        .predictions
    }
    assert predictions["A"].probability == pytest.approx(0.8, abs=1e-6)  # only the first has A
    assert predictions["B"].probability == pytest.approx((3 * 0.5 + 1 * 0.8) / 4, abs=1e-6)


def test_forward_with_activation_is_the_network_forward_and_its_gradcam_layer() -> None:
    """The hook-free forward (safe for concurrent analyses) computes what MONAI's does."""
    torch.manual_seed(3)
    network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=4).eval()
    batch = torch.rand(2, 1, 64, 64)
    captured: list[torch.Tensor] = []
    layer = network.get_submodule(GRADCAM_LAYER)
    hook = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.inference_mode():
        expected = network(batch)
        logits, activation = forward_with_activation(network, batch)
    hook.remove()
    assert torch.equal(logits, expected)
    assert torch.equal(activation, captured[0])
