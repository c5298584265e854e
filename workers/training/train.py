"""``cxr-node models train``: a MONAI DenseNet trained (or fine-tuned) on a site's labelled
radiographs, written as a bundle the node serves without code changes.

read labels -> clean -> split by patient -> read pixels through the serving path -> train with
masked binary cross-entropy (unknown labels do not count) -> validate each epoch (mean AUC) ->
checkpoint -> early stop -> thresholds on the validation split -> bundle + report.

Ctrl-C stops cleanly: the bundle is written from the best epoch so far. ``--resume`` continues
from the last checkpoint with the saved configuration and split.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor
from pydantic import BaseModel, Field, field_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cxr_node.errors import ModelBundleError
from workers.bundles import Preprocessing, read_bundle
from workers.ensemble import select_device
from workers.networks import build_network
from workers.preprocess import network_input
from workers.training import datasets
from workers.training.augment import AUGMENTATIONS, DEFAULT_AUGMENTATIONS, augmentation
from workers.training.bundle_writer import save_atomically, write_trained_bundle
from workers.training.images import LoadedImages, label_matrix, load_images
from workers.training.operating_points import ThresholdRule, choose_thresholds
from workers.training.validation import validation_report

log = logging.getLogger(__name__)

TRAINING_DIR = "training"
CHECKPOINTS_KEPT = 2


class TrainingError(Exception):
    """Training cannot start or produced nothing to write."""


class DivergedError(TrainingError):
    """The loss or the outputs stopped being finite (a learning rate too high, say)."""


class TrainConfig(BaseModel):
    """Everything a training run depends on; saved with its checkpoints and in the bundle."""

    model_config = {"extra": "forbid"}

    data: Path
    images_root: Path | None = None
    format: str | None = None
    labels: list[str] | None = None
    uncertain: Literal["ignore", "zeros", "ones"] = "ignore"
    architecture: Literal["densenet121", "densenet169", "densenet201"] = "densenet121"
    input_size: int = Field(default=224, ge=32, le=2048)
    channels: Literal[1, 3] = 1
    histogram_equalisation: bool = False
    square: Literal["crop", "pad"] = "crop"
    augment: list[str] = Field(default_factory=lambda: list(DEFAULT_AUGMENTATIONS))
    init: Path | None = None
    epochs: int = Field(default=10, ge=1, le=10000)
    batch_size: int = Field(default=16, ge=1, le=4096)
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(default=1e-5, ge=0.0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    patience: int = Field(default=5, ge=0, description="epochs without improvement; 0: never")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    threshold: str = "youden"
    name: str | None = None
    version: str = "1.0.0"
    bootstrap: int = Field(default=1000, ge=0)

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(AUGMENTATIONS))
        if unknown:
            raise ValueError(f"unknown augmentation {', '.join(unknown)}; known: {AUGMENTATIONS}")
        return names

    def preprocessing(self) -> Preprocessing:
        """The bundle's preprocessing: what serving will do to every image."""
        return Preprocessing(
            size=self.input_size,
            channels=self.channels,
            square=self.square,
            histogram_equalisation=self.histogram_equalisation,
        )


@dataclass
class EpochRecord:
    """One epoch's figures."""

    epoch: int
    loss: float
    validation_mean_auc: float | None
    validation_auc: dict[str, float | None]
    seconds: float
    best: bool


@dataclass
class TrainResult:
    """What a run produced."""

    bundle: Path
    best_epoch: int
    best_mean_auc: float | None
    history: list[EpochRecord]
    interrupted: bool
    thresholds: dict[str, float]


class _SquareDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Squares with their labels; augmented when training."""

    def __init__(
        self, images: LoadedImages, truth: np.ndarray, transform: Callable[..., Any] | None
    ) -> None:
        self.images = images
        self.truth = torch.from_numpy(truth)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        square = torch.from_numpy(self.images.square(index))[None]
        if self.transform is not None:
            augmented = self.transform(square)
            if isinstance(augmented, MetaTensor):
                augmented = augmented.as_tensor()  # plain tensors: no metadata tracking cost
            square = torch.as_tensor(augmented).float().clamp(0.0, 1.0)
        return square, self.truth[index]


def masked_bce(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the known labels only (NaN truth: unknown, U-Ignore)."""
    known = ~torch.isnan(truth)
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits.float(), torch.nan_to_num(truth), reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1)


def _auc_per_label(truth: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    aucs: dict[str, float | None] = {}
    for column, label in enumerate(labels):
        known = ~np.isnan(truth[:, column])
        y = truth[known, column]
        aucs[label] = (
            float(roc_auc_score(y, scores[known, column])) if len(np.unique(y)) == 2 else None
        )
    return aucs


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _initial_network(config: TrainConfig, labels: list[str]) -> nn.Module:
    """A fresh network, or one whose weights start from an installed bundle (fine-tuning):
    the feature layers whole, and the output rows of the labels both share."""
    network = build_network(config.architecture, config.channels, len(labels))
    if config.init is None:
        return network
    try:
        bundle = read_bundle(config.init)
    except ModelBundleError as exc:
        raise TrainingError(f"--init: {exc}") from None
    meta = bundle.metadata
    if meta.architecture != config.architecture or meta.preprocessing.channels != config.channels:
        raise TrainingError(
            f"--init {config.init}: a {meta.architecture} with {meta.preprocessing.channels} "
            f"channel(s); this run asks for {config.architecture} with {config.channels}"
        )
    if meta.demo:
        log.warning("--init %s is a DEMO bundle: its weights are random, not trained", meta.name)
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    head_weight, head_bias = (
        state.pop("class_layers.out.weight"),
        state.pop("class_layers.out.bias"),
    )
    network.load_state_dict(state, strict=False)
    out = network.get_submodule("class_layers.out")
    assert isinstance(out, nn.Linear)
    source = meta.label_outputs()
    shared = [label for label in labels if label in source]
    with torch.no_grad():
        for row, label in enumerate(labels):
            if label in source:
                out.weight[row] = head_weight[source[label]]
                out.bias[row] = head_bias[source[label]]
    log.info(
        "fine-tuning from %s: %d of %d labels start trained", meta.name, len(shared), len(labels)
    )
    return network


def learning_rate_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate's factor after ``epoch`` epochs of ``epochs``: cosine annealing to 0,
    a step of 0.1 every third of the run, or constant."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))
    if schedule == "step":
        return float(0.1 ** (epoch // max(1, epochs // 3)))
    return 1.0


def _scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """A schedule that reads the run's epoch count when it steps, so a resumed run that asks
    for more epochs stretches it instead of restarting it."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: learning_rate_factor(config.schedule, epoch, config.epochs)
    )


@torch.inference_mode()
def predict(
    network: nn.Module,
    images: LoadedImages,
    prep: Preprocessing,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
    mixed_precision: bool = True,
) -> np.ndarray:
    """Sigmoid outputs (N, outputs) of one network on every image, in order (bf16 on CUDA
    unless ``mixed_precision`` is off: serving computes in float32)."""
    network.eval()
    outputs = []
    for squares in images.batches(batch_size, progress):
        batch = network_input(squares, prep).to(device)
        with _autocast(device, mixed_precision):
            logits = network(batch)
        outputs.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def _autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 mixed precision on CUDA (compute capability 8 or later, where bf16 is native);
    a no-op on the CPU."""
    native = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled and native)


class _Run:
    """One training run's state: what a checkpoint holds."""

    def __init__(self, config: TrainConfig, out: Path, progress: bool) -> None:
        self.config = config
        self.out = out
        self.progress = progress
        self.folder = out / TRAINING_DIR
        self.checkpoints = self.folder / "checkpoints"
        self.device = select_device(config.device)
        self.prep = config.preprocessing()
        self.history: list[EpochRecord] = []
        self.best_epoch = 0
        self.best_auc: float | None = None

    # -- data ---------------------------------------------------------------------------
    def read_data(self, resume: bool) -> None:
        config = self.config
        self.data = datasets.read_labelled_data(
            config.data,
            images_root=config.images_root,
            fmt=config.format,
            labels=config.labels,
            uncertain=config.uncertain,
        )
        self.labels = list(self.data.labels)
        split_file = self.folder / "split.csv"
        if resume and split_file.is_file():
            splits = datasets.read_split(split_file, self.data.samples)
        else:
            splits = datasets.split_by_patient(
                self.data.samples, config.validation_fraction, seed=config.seed
            )
            datasets.write_split(split_file, splits)
        if not splits.get("train") or not splits.get("validation"):
            raise TrainingError(
                f"{config.data}: {len(self.data.samples)} usable images are too few to split "
                "into training and validation by patient"
            )
        self.train_images = load_images(
            splits["train"], self.prep, progress=self.progress, description="reading training"
        )
        self.validation_images = load_images(
            splits["validation"], self.prep, progress=self.progress, description="reading val"
        )
        self.train_truth = label_matrix(self.train_images.samples, self.labels)
        self.validation_truth = label_matrix(self.validation_images.samples, self.labels)
        for column, label in enumerate(self.labels):
            known = self.validation_truth[:, column]
            known = known[~np.isnan(known)]
            if len(np.unique(known)) < 2:
                log.warning("validation has only one class of %s: no AUC for it", label)

    # -- model --------------------------------------------------------------------------
    def build(self) -> None:
        torch.manual_seed(self.config.seed)
        self.network = _initial_network(self.config, self.labels).to(self.device)
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(),
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.scheduler = _scheduler(self.optimizer, self.config)

    def save_checkpoint(self, epoch: int) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        path = self.checkpoints / f"epoch-{epoch:05d}.pt"
        save_atomically(
            {
                "epoch": epoch,
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": [record.__dict__ for record in self.history],
                "best_epoch": self.best_epoch,
                "best_auc": self.best_auc,
                "torch_rng": torch.get_rng_state(),
            },
            path,
        )
        for old in sorted(self.checkpoints.glob("epoch-*.pt"))[:-CHECKPOINTS_KEPT]:
            old.unlink()

    def restore(self) -> int:
        """Load the latest checkpoint; return the epoch it ended."""
        found = sorted(self.checkpoints.glob("epoch-*.pt"))
        if not found:
            return 0
        state = torch.load(found[-1], map_location="cpu", weights_only=False)
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochRecord(**record) for record in state["history"]]
        self.best_epoch, self.best_auc = state["best_epoch"], state["best_auc"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resuming after epoch %d (best so far: epoch %d)", state["epoch"], self.best_epoch)
        return int(state["epoch"])

    # -- epochs -------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        config = self.config
        transform = augmentation(config.augment, config.input_size, seed=config.seed + epoch)
        dataset = _SquareDataset(self.train_images, self.train_truth, transform)
        order = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=order)
        self.network.train()
        total, seen = 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.epochs}", disable=not self.progress, leave=False
        )
        for squares, truth in bar:
            batch = network_input(squares, self.prep).to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                batch = batch.contiguous(memory_format=torch.channels_last)
            with _autocast(self.device):
                logits = self.network(batch)
            loss = masked_bce(logits, truth.to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach()) * len(squares)
            seen += len(squares)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        self.scheduler.step()
        return total / max(seen, 1)

    def validate(self, mixed_precision: bool = True) -> tuple[np.ndarray, dict[str, float | None]]:
        scores = predict(
            self.network,
            self.validation_images,
            self.prep,
            self.device,
            self.config.batch_size,
            mixed_precision=mixed_precision,
        )
        if not np.isfinite(scores).all():
            raise DivergedError("the network's outputs are no longer finite")
        return scores, _auc_per_label(self.validation_truth, scores, self.labels)


def _state_path(run: _Run) -> Path:
    return run.folder / "best.pt"


def _refuse_earlier_run(out: Path) -> None:
    """A fresh run never mixes with an earlier one's checkpoints, best weights or bundle."""
    earlier = [
        path
        for path in (
            out / TRAINING_DIR / "checkpoints",
            out / TRAINING_DIR / "best.pt",
            out / "configs",
        )
        if path.exists()
    ]
    if earlier:
        raise TrainingError(
            f"{out} holds an earlier training run or bundle ({earlier[0].relative_to(out)}): "
            "continue it with --resume, or train into another --out"
        )


def _stopped_early(run: _Run, last_epoch: int) -> bool:
    patience = run.config.patience
    return bool(patience and run.best_epoch and last_epoch - run.best_epoch >= patience)


def train(
    config: TrainConfig,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train, validate, checkpoint, choose thresholds and write the bundle at ``out``."""
    random.seed(config.seed)
    np.random.seed(config.seed % (2**32))
    threshold_rule = ThresholdRule.parse(config.threshold)
    if not resume:
        _refuse_earlier_run(out)
    run = _Run(config, out, progress)
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    run.read_data(resume)
    print_data_summary(run.data, run.train_images.skipped + run.validation_images.skipped)
    run.build()
    last = run.restore() if resume else 0
    interrupted = False
    started = time.monotonic()
    try:
        epochs = [] if _stopped_early(run, last) else range(last + 1, config.epochs + 1)
        for epoch in epochs:
            began = time.monotonic()
            loss = run.train_epoch(epoch)
            if not math.isfinite(loss):
                raise DivergedError(f"the loss is {loss} in epoch {epoch}")
            _scores, aucs = run.validate()
            mean_auc = _mean(list(aucs.values()))
            improved = run.best_epoch == 0 or (
                mean_auc is not None and (run.best_auc is None or mean_auc > run.best_auc)
            )
            record = EpochRecord(
                epoch, loss, mean_auc, aucs, round(time.monotonic() - began, 3), improved
            )
            run.history.append(record)
            if improved:
                run.best_epoch, run.best_auc = epoch, mean_auc
                save_atomically(run.network.state_dict(), _state_path(run))
            run.save_checkpoint(epoch)
            _announce(record, config.epochs, progress)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if _stopped_early(run, epoch):
                log.info("no better validation mean AUC for %d epochs: stopping", config.patience)
                break
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the bundle from the best epoch so far", file=sys.stderr)
    except DivergedError as exc:
        interrupted = True
        log.error("training diverged (%s): writing the bundle from the best epoch so far", exc)
    if not _state_path(run).is_file():
        raise TrainingError("stopped before the first epoch ended: nothing to write")
    return _finish(run, threshold_rule, interrupted, time.monotonic() - started)


def print_data_summary(data: datasets.LabelledData, unreadable: list[datasets.Skipped]) -> None:
    """What was used and what was skipped, and why (standard error: stdout stays for results)."""
    print(f"data: {data.format} from {data.source}", file=sys.stderr)
    for what, count in data.summary():
        print(f"  {what:<34} {count:>7}", file=sys.stderr)
    if unreadable:
        print(f"  {'skipped: pixels unreadable':<34} {len(unreadable):>7}", file=sys.stderr)
    for label, (positive, negative, unknown) in data.positives().items():
        print(
            f"  {label:<34} {positive:>7} positive {negative:>7} negative {unknown:>7} unknown",
            file=sys.stderr,
        )
    for note in data.notes:
        print(f"  note: {note}", file=sys.stderr)


def _announce(record: EpochRecord, epochs: int, progress: bool) -> None:
    if not progress:
        return
    auc = "n/a" if record.validation_mean_auc is None else f"{record.validation_mean_auc:.4f}"
    best = " (best)" if record.best else ""
    print(
        f"epoch {record.epoch}/{epochs}: loss {record.loss:.4f}, "
        f"validation mean AUC {auc}{best} [{record.seconds:.1f} s]",
        file=sys.stderr,
    )


def _finish(run: _Run, rule: ThresholdRule, interrupted: bool, seconds: float) -> TrainResult:
    """Best weights -> thresholds on the validation split -> bundle and its report."""
    config = run.config
    state = torch.load(_state_path(run), map_location="cpu", weights_only=True)
    run.network.load_state_dict(state)
    scores, _aucs = run.validate(mixed_precision=False)  # as served: float32
    thresholds, notes = choose_thresholds(run.validation_truth, scores, run.labels, rule)
    name = config.name or run.out.resolve().name
    summary = run.data.summary_json()
    summary["unreadable_pixels"] = [
        {"key": s.key, "row": s.row, "reason_code": s.reason_code, "reason": s.reason}
        for s in run.train_images.skipped + run.validation_images.skipped
    ]
    summary["split"] = {
        "train": len(run.train_images.samples),
        "validation": len(run.validation_images.samples),
        "by": "patient",
        "seed": config.seed,
        "file": f"{TRAINING_DIR}/split.csv",
    }
    evaluation, report = validation_report(
        run.out / "docs" / "validation",
        f"{name} {config.version}: validation split",
        run.labels,
        run.validation_truth,
        scores,
        thresholds,
        bootstrap=config.bootstrap,
        seed=config.seed,
        notes=notes,
    )
    best = run.best_auc
    description = (
        f"Trained by cxr-node models train on {len(run.train_images.samples)} images "
        f"({run.data.format}: {Path(config.data).name}); validation mean AUC "
        f"{'n/a' if best is None else f'{best:.3f}'} on {len(run.validation_images.samples)} "
        "images. Validate on your own patients before any use; not a diagnosis."
    )
    write_trained_bundle(
        run.out,
        name=name,
        version=config.version,
        description=description,
        architecture=config.architecture,
        preprocessing=run.prep,
        labels=run.labels,
        thresholds=[thresholds[label] for label in run.labels],
        state=state,
        records={
            "training": {
                "config": json.loads(config.model_dump_json()),
                "data": summary,
                "history": [record.__dict__ for record in run.history],
                "best_epoch": run.best_epoch,
                "interrupted": interrupted,
                "seconds": round(seconds, 1),
                "device": str(run.device),
                "threshold_rule": config.threshold,
            },
            "metrics": {"validation": evaluation, "report": str(report.relative_to(run.out))},
        },
    )
    return TrainResult(
        bundle=run.out,
        best_epoch=run.best_epoch,
        best_mean_auc=best,
        history=run.history,
        interrupted=interrupted,
        thresholds=thresholds,
    )
