"""Importing torchxrayvision DenseNet-121 weights: numerically the same network, safely loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_node.errors import ModelBundleError
from cxr_node.settings import load_settings
from tests.conftest import REPO
from tests.unit._xrv_reference import importable_as_torchxrayvision, op_norm, random_reference
from workers.bundles import read_bundle
from workers.ensemble import Ensemble
from workers.scoring import normalised_probability
from workers.torchxrayvision_import import VARIANTS, import_torchxrayvision


def _pickled_model_file(folder: Path, variant: str) -> Path:
    """A file shaped like a published one: the whole model pickled (random weights)."""
    path = folder / VARIANTS[variant][0]
    with importable_as_torchxrayvision():
        torch.save(random_reference(), path)
    assert "torchxrayvision" not in sys.modules  # the importer must do without it
    return path


@pytest.mark.parametrize("variant", ["all", "nih"])
def test_converted_network_gives_the_original_outputs(tmp_path: Path, variant: str) -> None:
    weights = _pickled_model_file(tmp_path, variant)
    folder = import_torchxrayvision(weights, tmp_path / "models", variant=None)
    bundle = read_bundle(folder)
    assert not bundle.metadata.demo
    assert "torchxrayvision" in bundle.metadata.license

    reference = random_reference()  # the same seed: the same weights as the file
    labels, thresholds = VARIANTS[variant][1], VARIANTS[variant][2]
    torch.manual_seed(1)
    image = torch.rand(1, 1, 224, 224) * 2048 - 1024
    with torch.no_grad():
        expected_raw = torch.sigmoid(
            reference.classifier(
                torch.nn.functional.adaptive_avg_pool2d(
                    torch.relu(reference.features(image)), 1
                ).flatten(1)
            )
        )[0]
        expected_normalised = op_norm(expected_raw[None], torch.tensor(thresholds))[0]
        reference.op_threshs = torch.tensor(thresholds)
        assert torch.allclose(reference(image)[0], expected_normalised)

    settings = load_settings(data_dir=tmp_path, models_dir=tmp_path / "models")
    predictions = {p.label: p for p in Ensemble.from_settings(settings).infer(image).predictions}
    trained = [i for i, label in enumerate(labels) if label]
    assert sorted(predictions) == sorted(labels[i] for i in trained)
    for index in trained:
        ours = predictions[labels[index]]
        assert ours.threshold == pytest.approx(thresholds[index])
        assert ours.probability == pytest.approx(float(expected_raw[index]), abs=1e-5)
        assert normalised_probability(ours.probability, ours.threshold) == pytest.approx(
            float(expected_normalised[index]), abs=1e-5
        )


def test_state_dict_files_are_accepted_too(tmp_path: Path) -> None:
    weights = tmp_path / "my-densenet.pt"
    torch.save(random_reference().state_dict(), weights)
    folder = import_torchxrayvision(weights, tmp_path / "models", variant="chex")
    assert len(read_bundle(folder).metadata.labels) == 11


def test_unknown_file_name_asks_for_the_variant(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(random_reference().state_dict(), weights)
    with pytest.raises(ModelBundleError, match="--variant"):
        import_torchxrayvision(weights, tmp_path / "models", variant=None)


class _Payload:
    """Pickles as a call to os.system: what a hostile weights file would contain."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/cxr-node-should-not-exist",))


def test_pickled_code_is_refused_not_run(tmp_path: Path) -> None:
    weights = tmp_path / "hostile.pt"
    torch.save({"model": _Payload()}, weights)
    with pytest.raises(ModelBundleError, match="refusing"):
        import_torchxrayvision(weights, tmp_path / "models", variant="all")
    assert not Path("/tmp/cxr-node-should-not-exist").exists()


def test_wrong_network_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "small.pt"
    torch.save({"classifier.weight": torch.zeros(18, 4)}, weights)
    with pytest.raises(ModelBundleError, match="not a torchxrayvision DenseNet-121"):
        import_torchxrayvision(weights, tmp_path / "models", variant="all")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cxr_node", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_import_list_and_verify_refuses_tampered_weights(tmp_path: Path) -> None:
    weights = _pickled_model_file(tmp_path, "all")
    data = tmp_path / "data"
    imported = _cli("models", "import-torchxrayvision", str(weights), "--data-dir", str(data))
    assert imported.returncode == 0, imported.stderr
    assert "xrv-densenet121-res224-all" in imported.stdout
    assert _cli("models", "verify", "--data-dir", str(data)).returncode == 0
    listed = _cli("models", "list", "--data-dir", str(data))
    assert "xrv-densenet121-res224-all" in listed.stdout and "DEMO" not in listed.stdout

    weights_file = data / "models/xrv-densenet121-res224-all/models/model.pt"
    content = bytearray(weights_file.read_bytes())
    content[len(content) // 2] ^= 0xFF
    weights_file.write_bytes(bytes(content))
    verified = _cli("models", "verify", "--data-dir", str(data))
    assert verified.returncode == 1
    assert "does not match the declared" in verified.stdout
    metadata = json.loads((weights_file.parents[1] / "configs/metadata.json").read_text())
    assert metadata["weights_sha256"] not in verified.stdout  # only a prefix is shown
    with pytest.raises(ModelBundleError, match="refusing to load"):
        read_bundle(weights_file.parents[1])
    np.testing.assert_equal(len(metadata["labels"]), 18)
