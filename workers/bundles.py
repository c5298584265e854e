"""Model bundles in MONAI bundle layout: ``configs/metadata.json`` and ``models/model.pt``.

The metadata declares architecture, input size and channels, preprocessing, labels with codes
and operating thresholds, version, and the sha256 of the weights. A bundle whose weights do not
match its sha256 is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from cxr_node.errors import ModelBundleError
from cxr_node.jobs import CodedConcept
from workers.labels import TORCHXRAYVISION_LABELS, code_for

METADATA_PATH = Path("configs/metadata.json")
WEIGHTS_PATH = Path("models/model.pt")
DEMO_SEEDS = {"cxr-demo-densenet121-a": 20261122, "cxr-demo-densenet121-b": 20261123}
DEMO_NOTICE = "DEMO: deterministic random weights, NOT TRAINED, not for clinical use"


class Preprocessing(BaseModel):
    """How the network wants its input (what it was trained on)."""

    size: int = Field(ge=32, le=2048)
    channels: Literal[1, 3] = 1
    value_range: tuple[float, float] = (-1024.0, 1024.0)
    square: Literal["crop", "pad"] = "crop"
    histogram_equalisation: bool = False


class LabelSpec(BaseModel):
    """One output of the network: its name, code for the SR, and operating threshold.

    ``output`` is the network output's index; by default the label's position in the list.
    """

    name: str
    code: CodedConcept
    threshold: float = Field(ge=0.0, le=1.0)
    output: int | None = Field(default=None, ge=0)


class BundleMetadata(BaseModel):
    """``configs/metadata.json`` of a cxr-node model bundle (MONAI bundle keys plus ours)."""

    name: str
    version: str
    description: str
    demo: bool
    architecture: Literal["densenet121", "densenet169", "densenet201"]
    preprocessing: Preprocessing
    labels: list[LabelSpec]
    outputs: int | None = Field(default=None, ge=1, description="Network outputs, if more")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    license: str = ""
    monai_version: str = ""
    pytorch_version: str = ""

    def label_outputs(self) -> dict[str, int]:
        """Label name -> network output index (a label's position unless it says otherwise)."""
        return {
            spec.name: spec.output if spec.output is not None else position
            for position, spec in enumerate(self.labels)
        }

    def output_count(self) -> int:
        """How many outputs the network has."""
        return max([*self.label_outputs().values(), (self.outputs or 0) - 1]) + 1


class Bundle(BaseModel):
    """A bundle on disk and its validated metadata."""

    path: Path
    metadata: BundleMetadata

    @property
    def weights_path(self) -> Path:
        """The weights file."""
        return self.path / WEIGHTS_PATH

    def __str__(self) -> str:
        tag = " [DEMO - not trained]" if self.metadata.demo else ""
        return (
            f"{self.metadata.name} {self.metadata.version} ({self.metadata.architecture}, "
            f"{len(self.metadata.labels)} labels, {self.metadata.preprocessing.size}px){tag}"
        )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(path: Path, verify: bool = True) -> Bundle:
    """Read and validate a bundle; with ``verify``, refuse weights that do not match the sha256."""
    metadata_file = path / METADATA_PATH
    if not metadata_file.is_file():
        raise ModelBundleError(f"{path}: no {METADATA_PATH}; not a model bundle")
    try:
        metadata = BundleMetadata.model_validate_json(metadata_file.read_text())
    except ValidationError as exc:
        raise ModelBundleError(f"{metadata_file}: invalid metadata: {exc}") from None
    bundle = Bundle(path=path, metadata=metadata)
    if not bundle.weights_path.is_file():
        raise ModelBundleError(f"{path}: no weights at {WEIGHTS_PATH}")
    if verify:
        actual = sha256_of(bundle.weights_path)
        if actual != metadata.weights_sha256:
            raise ModelBundleError(
                f"{path}: weights sha256 {actual[:16]}... does not match the declared "
                f"{metadata.weights_sha256[:16]}...; refusing to load"
            )
    return bundle


def list_bundles(models_dir: Path) -> list[Bundle]:
    """Every bundle under ``models_dir`` (metadata only, weights not hashed)."""
    if not models_dir.is_dir():
        return []
    return [
        read_bundle(child, verify=False)
        for child in sorted(models_dir.iterdir())
        if (child / METADATA_PATH).is_file()
    ]


def write_demo_bundles(models_dir: Path, force: bool = False) -> list[Path]:
    """Write the two DEMO DenseNet-121 bundles: deterministic random weights, clearly labelled."""
    import monai
    import torch

    written = []
    for name, seed in DEMO_SEEDS.items():
        folder = models_dir / name
        if (folder / METADATA_PATH).is_file() and not force:
            written.append(folder)
            continue
        (folder / "configs").mkdir(parents=True, exist_ok=True)
        (folder / "models").mkdir(parents=True, exist_ok=True)
        network = _demo_network(seed)
        torch.save(network.state_dict(), folder / WEIGHTS_PATH)
        metadata = BundleMetadata(
            name=name,
            version="0.1.0-demo",
            description=DEMO_NOTICE,
            demo=True,
            architecture="densenet121",
            preprocessing=Preprocessing(size=224, channels=1, value_range=(-1024.0, 1024.0)),
            labels=[
                LabelSpec(name=label, code=code_for(label), threshold=0.5)
                for label in TORCHXRAYVISION_LABELS
            ],
            weights_sha256=sha256_of(folder / WEIGHTS_PATH),
            license="Apache-2.0 (generated locally; no trained weights)",
            monai_version=monai.__version__,
            pytorch_version=torch.__version__,
        )
        (folder / METADATA_PATH).write_text(json.dumps(metadata.model_dump(mode="json"), indent=2))
        written.append(folder)
    return written


def _demo_network(seed: int) -> Any:
    """A DenseNet-121 with deterministic random weights whose outputs are not saturated.

    Fresh batch-norm statistics (mean 0, variance 1) make a random network answer 1.0 for
    every label on [-1024, 1024] inputs; the statistics are re-estimated on deterministic
    synthetic images so that the DEMO model's probabilities spread around 0.5.
    """
    import torch

    from workers.networks import build_network

    torch.manual_seed(seed)
    network = build_network("densenet121", in_channels=1, out_channels=18)
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand((16, 1, 14, 14), generator=generator)
    images = torch.nn.functional.interpolate(smooth, size=(224, 224), mode="bilinear")
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    with torch.no_grad():
        network(images * 2048.0 - 1024.0)
    network.eval()
    return network
