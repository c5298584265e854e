"""``cxr-node models import-torchxrayvision``: a torchxrayvision DenseNet-121 weights file that a
user downloaded themselves becomes a cxr-node model bundle, so that we never distribute weights.

torchxrayvision (Cohen et al., Apache-2.0) publishes its DenseNet weights as pickled model
objects. We read them without torchxrayvision or torchvision installed and without running
pickled code: ``torch.load(weights_only=True)`` with torchxrayvision's own classes replaced by
inert ``nn.Module`` stand-ins, and every other global limited to torch's own. The layer names
then map onto MONAI's DenseNet-121 (``denselayerN.x`` -> ``denselayerN.layers.x``,
``classifier`` -> ``class_layers.out``); a test proves the outputs equal.

Labels, operating thresholds and preprocessing are those torchxrayvision 1.5.7 declares for each
variant (``torchxrayvision/models.py``, ``model_urls``): 224 x 224, one channel, centre crop,
values scaled to [-1024, 1024]. Outputs a variant was not trained for (empty label) are dropped.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import monai
import torch
from torch import nn

from cxr_node.errors import ModelBundleError
from workers.bundles import (
    METADATA_PATH,
    WEIGHTS_PATH,
    BundleMetadata,
    LabelSpec,
    Preprocessing,
    sha256_of,
)
from workers.labels import TORCHXRAYVISION_LABELS, code_for
from workers.networks import build_network

_NAN = math.nan
_L = TORCHXRAYVISION_LABELS


def _only(*names: str) -> list[str]:
    return [label if label in names else "" for label in _L]


_CHEX_LIKE = _only(
    "Atelectasis", "Consolidation", "Pneumothorax", "Edema", "Effusion", "Pneumonia",
    "Cardiomegaly", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)  # fmt: skip

VARIANTS: dict[str, tuple[str, list[str], list[float]]] = {
    # variant: (weights file name, 18 labels ("" = not trained), 18 operating thresholds)
    "all": (
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        list(_L),
        [
            0.07422872,
            0.038290843,
            0.09814756,
            0.0098118475,
            0.023601074,
            0.0022490358,
            0.010060724,
            0.103246614,
            0.056810737,
            0.026791653,
            0.050318155,
            0.023985857,
            0.01939503,
            0.042889766,
            0.053369623,
            0.035975814,
            0.20204692,
            0.05015312,
        ],
    ),
    "nih": (
        "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        [*_L[:14], "", "", "", ""],
        [
            0.039117552,
            0.0034529066,
            0.11396341,
            0.0057298196,
            0.00045666535,
            0.0018880932,
            0.012037827,
            0.038744126,
            0.0037213727,
            0.014730946,
            0.016149804,
            0.054241467,
            0.037198864,
            0.0004403434,
            _NAN,
            _NAN,
            _NAN,
            _NAN,
        ],
    ),
    "pc": (
        "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        [*_L[:14], "", "Fracture", "", ""],
        [
            0.031012505,
            0.013347598,
            0.081435576,
            0.001262615,
            0.002587246,
            0.0035944257,
            0.0023071,
            0.055412333,
            0.044385884,
            0.042766232,
            0.043258056,
            0.037629247,
            0.005658899,
            0.0091741895,
            _NAN,
            0.026507627,
            _NAN,
            _NAN,
        ],
    ),
    "chex": (
        "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _CHEX_LIKE,
        [
            0.1988969,
            0.05710573,
            _NAN,
            0.0531293,
            0.1435217,
            _NAN,
            _NAN,
            0.27212676,
            0.07749717,
            _NAN,
            0.19712369,
            _NAN,
            _NAN,
            _NAN,
            0.09932402,
            0.09273402,
            0.3270967,
            0.10888247,
        ],
    ),
    "rsna": (
        "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _only("Pneumonia", "Lung Opacity"),
        [_NAN] * 8 + [0.13486601] + [_NAN] * 7 + [0.13511065, _NAN],
    ),
    "mimic_nb": (
        "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _CHEX_LIKE,
        [
            0.08558747,
            0.011884617,
            _NAN,
            0.0040595434,
            0.010733786,
            _NAN,
            _NAN,
            0.118761964,
            0.022924708,
            _NAN,
            0.06358637,
            _NAN,
            _NAN,
            _NAN,
            0.022143636,
            0.017476924,
            0.1258702,
            0.014020768,
        ],
    ),
    "mimic_ch": (
        "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _CHEX_LIKE,
        [
            0.09121389,
            0.010573786,
            _NAN,
            0.005023008,
            0.003698257,
            _NAN,
            _NAN,
            0.08001232,
            0.037242252,
            _NAN,
            0.05006329,
            _NAN,
            _NAN,
            _NAN,
            0.019866971,
            0.03823637,
            0.11303808,
            0.0069147074,
        ],
    ),
}

LICENCE_NOTE = (
    "Weights by torchxrayvision (Cohen et al., https://github.com/mlmed/torchxrayvision, code "
    "Apache-2.0), trained on public chest X-ray datasets whose own terms apply; imported from a "
    "file the user obtained. Research model: not a medical device, not for diagnostic use."
)

_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(?!layers\.)")
_ALLOWED_MODULE_PREFIXES = ("torch.", "collections.")
_STAND_IN_PREFIXES = ("torchxrayvision.", "torchvision.")


def detect_variant(weights_file: Path) -> str:
    """The variant whose published file name this is, or an error asking for ``--variant``."""
    for variant, (file_name, _labels, _thresholds) in VARIANTS.items():
        if weights_file.name == file_name:
            return variant
    raise ModelBundleError(
        f"{weights_file.name} is not a known torchxrayvision DenseNet-121 file name; "
        f"say which it is with --variant ({', '.join(VARIANTS)})"
    )


def _stand_in(qualified_name: str) -> type:
    """An inert nn.Module class with the pickled class's module and name (no code of theirs)."""
    module, _, name = qualified_name.rpartition(".")
    return type(name, (nn.Module,), {"__module__": module, "__qualname__": name})


def _resolve_global(qualified_name: str) -> Any:
    if qualified_name.startswith(_STAND_IN_PREFIXES):
        return _stand_in(qualified_name)
    if qualified_name.startswith(_ALLOWED_MODULE_PREFIXES):
        module, _, name = qualified_name.rpartition(".")
        return getattr(importlib.import_module(module), name)
    raise ModelBundleError(f"the weights file refers to {qualified_name}; refusing to load it")


def load_torchxrayvision_state(weights_file: Path) -> dict[str, torch.Tensor]:
    """The state dict of a torchxrayvision DenseNet file (a pickled model or a state dict)."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(weights_file)
        stand_ins = [_resolve_global(name) for name in unsafe]
        with torch.serialization.safe_globals(stand_ins):
            loaded = torch.load(weights_file, map_location="cpu", weights_only=True)
    except ModelBundleError:
        raise
    except Exception as exc:
        raise ModelBundleError(
            f"{weights_file}: not a readable PyTorch weights file ({type(exc).__name__})"
        ) from None
    if isinstance(loaded, nn.Module):
        return dict(loaded.state_dict())
    if isinstance(loaded, Mapping) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return dict(loaded)
    raise ModelBundleError(f"{weights_file}: neither a model nor a state dict")


def to_monai_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchxrayvision/torchvision DenseNet keys to MONAI DenseNet-121 keys."""
    converted = {}
    for key, value in state.items():
        if key == "op_threshs":
            continue  # their thresholds live in our metadata
        key = _LAYER.sub(r"\1.layers.", key)
        key = key.replace("classifier.", "class_layers.out.")
        converted[key] = value
    return converted


def import_torchxrayvision(weights_file: Path, models_dir: Path, variant: str | None) -> Path:
    """Write a bundle for the weights file; return its folder. Refuses a mismatching network."""
    variant = variant or detect_variant(weights_file)
    if variant not in VARIANTS:
        raise ModelBundleError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
    _file_name, labels, thresholds = VARIANTS[variant]
    network = build_network("densenet121", in_channels=1, out_channels=len(labels))
    state = to_monai_state(load_torchxrayvision_state(weights_file))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0]
        raise ModelBundleError(
            f"{weights_file}: not a torchxrayvision DenseNet-121 "
            f"with {len(labels)} outputs ({first_line})"
        ) from None
    name = f"xrv-densenet121-res224-{variant}"
    folder = models_dir / name
    (folder / "models").mkdir(parents=True, exist_ok=True)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / WEIGHTS_PATH)
    digest = sha256_of(folder / WEIGHTS_PATH)
    metadata = BundleMetadata(
        name=name,
        version=f"xrv-{digest[:8]}",
        description=f"torchxrayvision DenseNet-121 '{variant}' weights, imported by cxr-node",
        demo=False,
        architecture="densenet121",
        preprocessing=Preprocessing(
            size=224, channels=1, value_range=(-1024.0, 1024.0), square="crop"
        ),
        labels=[
            LabelSpec(name=label, code=code_for(label), threshold=threshold, output=index)
            for index, (label, threshold) in enumerate(zip(labels, thresholds, strict=True))
            if label and not math.isnan(threshold)
        ],
        outputs=len(labels),
        weights_sha256=digest,
        license=LICENCE_NOTE,
        monai_version=monai.__version__,
        pytorch_version=torch.__version__,
    )
    (folder / METADATA_PATH).write_text(json.dumps(metadata.model_dump(mode="json"), indent=2))
    return folder
