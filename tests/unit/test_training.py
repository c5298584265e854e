"""Training, evaluation and calibration end to end on the synthetic task (issue 14)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_node.cli import main
from cxr_node.settings import Settings
from tests.training import TINY, synthetic_task, train_tiny
from workers.analysis import Analyzer
from workers.bundles import Preprocessing, read_bundle
from workers.ensemble import Ensemble
from workers.networks import build_network
from workers.offline import read_source
from workers.results import encode_results
from workers.training import datasets
from workers.training.bundle_writer import write_trained_bundle
from workers.training.calibrate import floored
from workers.training.images import label_matrix, load_images
from workers.training.predictions import load_model, predict_data
from workers.training.synthetic import SYNTHETIC_LABELS
from workers.training.train import (
    TrainConfig,
    TrainingError,
    TrainResult,
    _initial_network,
    _scheduler,
    learning_rate_factor,
    predict,
    train,
)


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_task(tmp_path_factory.mktemp("task"))


@pytest.fixture(scope="module")
def trained(task: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train_tiny(task, tmp_path_factory.mktemp("models") / "site-model", epochs=7)


def _validation(bundle: Path, task: Path) -> list[datasets.Sample]:
    data = datasets.read_labelled_data(task)
    return datasets.read_split(bundle / "training" / "split.csv", data.samples)["validation"]


def test_a_small_network_learns_the_task_and_an_untrained_one_does_not(
    trained: TrainResult, task: Path
) -> None:
    assert trained.best_mean_auc is not None and trained.best_mean_auc > 0.9
    prep = Preprocessing(size=64)
    images = load_images(_validation(trained.bundle, task), prep, progress=False)
    truth = label_matrix(images.samples, list(SYNTHETIC_LABELS))
    torch.manual_seed(0)
    untrained = predict(build_network("densenet121", 1, 3), images, prep, torch.device("cpu"), 64)
    aucs = [roc_auc_score(truth[:, c], untrained[:, c]) for c in range(3)]
    assert abs(float(np.mean(aucs)) - 0.5) < 0.15, aucs


def test_the_bundle_is_complete_and_never_a_demo(trained: TrainResult, task: Path) -> None:
    bundle = read_bundle(trained.bundle)  # verifies the weights' sha256
    meta = bundle.metadata
    assert meta.demo is False and "DEMO" not in meta.description
    assert [spec.name for spec in meta.labels] == list(SYNTHETIC_LABELS)
    assert all(0.0 < spec.threshold < 1.0 for spec in meta.labels)
    assert meta.preprocessing.size == 64
    record = json.loads((trained.bundle / "configs" / "training.json").read_text())
    assert record["data"]["used"] == 240 and record["data"]["split"]["by"] == "patient"
    assert [row["epoch"] for row in record["history"]] == [1, 2, 3, 4, 5, 6, 7]
    metrics = json.loads((trained.bundle / "configs" / "metrics.json").read_text())
    assert metrics["validation"]["mean_auc"] > 0.9
    assert (trained.bundle / "docs" / "validation" / "report.html").is_file()
    data = datasets.read_labelled_data(task)
    splits = datasets.read_split(trained.bundle / "training" / "split.csv", data.samples)
    patients = {name: {s.patient for s in samples} for name, samples in splits.items()}
    assert not patients["train"] & patients["validation"]


def test_the_node_serves_the_trained_bundle_as_it_is(
    trained: TrainResult, task: Path, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, models_dir=trained.bundle.parent)
    source = read_source(task.parent / "images" / "patient00001_00000.png")
    analysed = Analyzer(settings).analyse(source)
    model = analysed.analysis.model
    assert not model.demo and "DEMO" not in model.name
    assert [f.label for f in analysed.analysis.findings] == list(SYNTHETIC_LABELS)
    for _kind, dataset in encode_results(source, analysed):
        assert "DEMO" not in str(dataset.get("SeriesDescription", ""))
        assert "NOT TRAINED" not in str(dataset)


def test_interrupt_keeps_the_best_epoch_and_resume_continues(task: Path, tmp_path: Path) -> None:
    config = TrainConfig.model_validate({"data": task, "epochs": 3, **TINY})
    out = tmp_path / "interrupted"

    def interrupt(_record: object) -> None:
        raise KeyboardInterrupt

    stopped = train(config, out, progress=False, on_epoch_end=interrupt)
    assert stopped.interrupted and stopped.best_epoch == 1
    assert read_bundle(out).metadata.demo is False
    assert sorted(p.name for p in (out / "training" / "checkpoints").iterdir()) == [
        "epoch-00001.pt"
    ]
    resumed = train(config, out, resume=True, progress=False)
    assert not resumed.interrupted
    assert [record.epoch for record in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == stopped.history[0]
    with pytest.raises(TrainingError, match="--resume"):  # a fresh run never mixes with it
        train(config, out, progress=False)


def test_the_schedule_follows_the_epoch_count_of_a_resumed_run() -> None:
    assert learning_rate_factor("cosine", 0, 8) == 1.0
    assert learning_rate_factor("cosine", 4, 8) == pytest.approx(0.5)
    assert learning_rate_factor("cosine", 4, 4) == pytest.approx(0.0)
    assert learning_rate_factor("step", 3, 9) == pytest.approx(0.1)
    assert learning_rate_factor("constant", 7, 8) == 1.0
    config = TrainConfig.model_validate({"data": "x.csv", "epochs": 4, "learning_rate": 1.0})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = _scheduler(optimizer, config)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    config.epochs = 8  # resumed with --epochs 8: epoch 3 of 8, not of 4
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate_factor("cosine", 3, 8))


def test_fitted_weights_never_drop_a_member() -> None:
    weights = floored([1.0, 0.0])
    assert all(w >= 0.0099 for w in weights) and sum(weights) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="unknown augmentation"):
        TrainConfig.model_validate({"data": "x.csv", "augment": ["mirror"]})


def test_evaluate_prints_one_json_object_with_the_per_finding_table(
    trained: TrainResult, task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report"
    args = ["models", "evaluate", str(trained.bundle), "--data", str(task), "--json"]
    assert main([*args, "--report", str(report), "--data-dir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 240 and result["model"]["demo"] is False
    ensemble, _config, _folder = load_model([trained.bundle], device="cpu")
    predictions = predict_data(ensemble, datasets.read_labelled_data(task), progress=False)
    for column, row in enumerate(result["per_finding"]):
        assert row["label"] == predictions.labels[column]
        expected = roc_auc_score(predictions.truth[:, column], predictions.scores[:, column])
        assert row["auc"] == pytest.approx(expected, abs=1e-9)
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
        for key in ("n_positive", "n_negative", "accuracy", "sensitivity", "specificity"):
            assert key in row
        assert row["threshold"] == pytest.approx(predictions.thresholds[column])
    assert (report / "report.html").is_file() and (report / "roc-nodule.png").is_file()


def test_calibrate_reaches_the_target_sensitivity_as_a_new_bundle_version(
    trained: TrainResult, task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "models" / "site-model"
    shutil.copytree(trained.bundle, bundle)
    args = ["models", "calibrate", str(bundle), "--data", str(task), "--rule", "sensitivity:0.95"]
    assert main([*args, "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    meta = read_bundle(bundle).metadata
    assert meta.version == "1.0.1"
    assert (bundle / "configs" / "history" / "metadata-1.0.0.json").is_file()
    evaluate = ["models", "evaluate", str(bundle), "--data", str(task), "--json"]
    assert main([*evaluate, "--bootstrap", "0", "--data-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)["per_finding"]
    assert all(row["sensitivity"] >= 0.95 for row in rows), rows
    served = Ensemble.from_settings(Settings(data_dir=tmp_path))
    thresholds = {spec.name: spec.threshold for spec in meta.labels}
    assert {p.label: p.threshold for p in served.infer(torch.zeros(1, 1, 64, 64)).predictions} == (
        pytest.approx(thresholds)
    )


def _noise_bundle(folder: Path) -> Path:
    """An untrained member whose answers vary from image to image but mean nothing (batch-norm
    statistics re-estimated on random images, as for the DEMO model)."""
    torch.manual_seed(1)
    network = build_network("densenet121", 1, len(SYNTHETIC_LABELS))
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    with torch.no_grad():
        network(torch.rand(32, 1, 64, 64) * 2048.0 - 1024.0)
    network.eval()
    return write_trained_bundle(
        folder,
        name=folder.name,
        version="1.0.0",
        description="untrained network for a test",
        architecture="densenet121",
        preprocessing=Preprocessing(size=64),
        labels=list(SYNTHETIC_LABELS),
        thresholds=[0.5] * len(SYNTHETIC_LABELS),
        state=network.state_dict(),
        records={},
    )


def test_calibrate_fits_ensemble_weights_into_a_versioned_configuration(
    trained: TrainResult, task: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained.bundle, models / "site-model")
    _noise_bundle(models / "noise")
    before = Ensemble.from_settings(Settings(data_dir=tmp_path)).info.version
    args = ["models", "calibrate", str(models / "site-model"), str(models / "noise")]
    args += ["--data", str(task), "--fit-weights", "--json", "--data-dir", str(tmp_path)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["weights"]["site-model"] > result["weights"]["noise"]
    assert sum(result["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    config = json.loads((models / "ensemble.json").read_text())
    assert config["version"] == "1"
    assert {m["bundle"] for m in config["members"]} == {"site-model", "noise"}
    served = Ensemble.from_settings(Settings(data_dir=tmp_path))
    assert served.config_version == "1" and served.info.version != before
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads((models / "ensemble.json").read_text())["version"] == "2"
    assert (models / "ensemble-history" / "ensemble-1.json").is_file()


def test_fine_tuning_starts_from_the_bundle_with_the_labels_it_shares(
    trained: TrainResult, task: Path
) -> None:
    labels = ["Effusion", "Cardiomegaly"]
    config = TrainConfig.model_validate({"data": task, "epochs": 1, "init": trained.bundle})
    network = _initial_network(config, labels)
    state = torch.load(read_bundle(trained.bundle).weights_path, weights_only=True)
    head = network.get_submodule("class_layers.out")
    assert isinstance(head, torch.nn.Linear)
    effusion = list(SYNTHETIC_LABELS).index("Effusion")
    assert torch.equal(head.weight[0].detach(), state["class_layers.out.weight"][effusion])
    first_conv = "features.conv0.weight"
    assert torch.equal(network.state_dict()[first_conv], state[first_conv])


def test_bad_label_files_get_a_clear_error_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("Path,Effusion\na.png,1\nb.png,2\n")
    args = ["models", "train", "--data", str(labels), "--epochs", "1", "--out", str(tmp_path / "b")]
    assert main([*args, "--data-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "labels.csv, line 3" in error


@pytest.mark.gpu
def test_training_on_cuda_uses_mixed_precision_and_writes_a_bundle(
    task: Path, tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    result = train_tiny(task, tmp_path / "gpu-model", epochs=2, device="cuda")
    record = json.loads((result.bundle / "configs" / "training.json").read_text())
    assert record["device"].startswith("cuda")
    assert read_bundle(result.bundle).metadata.demo is False
