"""A small trained bundle for tests: the synthetic task (planted patterns, made here, never
shipped) learnt by a DenseNet-121 at 64 pixels on the CPU in a few seconds."""

from __future__ import annotations

from pathlib import Path

from workers.training.synthetic import write_synthetic_task
from workers.training.train import TrainConfig, TrainResult, train

TINY = {
    "input_size": 64,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "bootstrap": 200,
    "patience": 0,
    "device": "cpu",
}


def synthetic_task(folder: Path, images: int = 240, size: int = 64, seed: int = 0) -> Path:
    """The task's CSV (written once per folder)."""
    csv_path = folder / "labels.csv"
    if not csv_path.is_file():
        write_synthetic_task(folder, images=images, size=size, seed=seed)
    return csv_path


def train_tiny(data: Path, out: Path, epochs: int, **overrides: object) -> TrainResult:
    """Train on the synthetic task without progress bars."""
    config = TrainConfig.model_validate({"data": data, "epochs": epochs, **TINY, **overrides})
    return train(config, out, progress=False)
