"""``cxr-node models train | evaluate | calibrate | synthetic-task``: model work on a site's data.

The parsers live here; the work is in ``workers.training`` (it needs torch), imported only when
one of these commands runs, so the edge never loads torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxr_node.settings import Settings


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in _list(text)]


def _data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--data", type=Path, required=required, help="label CSV, or a folder (folders, dicom)"
    )
    parser.add_argument("--images-root", type=Path, help="where the images are (default: beside)")
    parser.add_argument(
        "--format",
        dest="fmt",
        choices=("chexpert", "nih", "folders", "dicom", "covid", "mhh"),
        help="guessed when not given",
    )


def add_parsers(
    model_commands: argparse._SubParsersAction,
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The training, evaluation and calibration sub-commands of ``cxr-node models``."""
    train = model_commands.add_parser(
        "train", help="train or fine-tune a DenseNet on labelled radiographs; write a bundle"
    )
    common(train)
    _data_arguments(train, required=True)
    train.add_argument("--labels", type=_list, help="findings to learn, comma-separated")
    train.add_argument("--uncertain", choices=("ignore", "zeros", "ones"), default="ignore")
    train.add_argument(
        "--architecture", choices=("densenet121", "densenet169", "densenet201"), default=None
    )
    train.add_argument("--input-size", type=int, help="pixels a side (224 to 1024; default 224)")
    train.add_argument("--channels", type=int, choices=(1, 3))
    train.add_argument("--histogram-equalisation", action="store_true", default=None)
    train.add_argument("--square", choices=("crop", "pad"))
    train.add_argument(
        "--augment", help="comma-separated: flip, rotate, affine, intensity; 'none' for none"
    )
    train.add_argument("--init", type=Path, help="a bundle to fine-tune from")
    train.add_argument("--epochs", type=int, required=True)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--schedule", choices=("cosine", "step", "constant"))
    train.add_argument("--patience", type=int, help="early stop after N epochs; 0 never")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"))
    train.add_argument("--seed", type=int)
    train.add_argument("--validation-fraction", type=float)
    train.add_argument("--threshold", help="youden (default), sensitivity:0.9 or specificity:0.9")
    train.add_argument("--name", help="bundle name (default: the folder's name)")
    train.add_argument("--version", help="bundle version (default 1.0.0)")
    train.add_argument("--bootstrap", type=int, help="bootstrap resamples for the CIs")
    train.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = model_commands.add_parser(
        "evaluate", help="per-finding AUC (95%% CI), sensitivity, specificity...; plots, report"
    )
    common(evaluate)
    _model_arguments(evaluate, data_required=False)
    evaluate.add_argument("--findings", type=_list, help="evaluate only these findings")
    evaluate.add_argument("--weights", type=_floats, help="ensemble weights, comma-separated")
    evaluate.add_argument(
        "--ledger", action="store_true", help="evaluate the node's results on real traffic"
    )
    evaluate.add_argument(
        "--labels", type=Path, help="with --ledger: ground truth CSV by accession or study UID"
    )
    evaluate.add_argument("--weeks", type=int, default=12, help="with --ledger: drift weeks")
    evaluate.add_argument("--report", type=Path, help="write report.html and PNG plots here")
    evaluate.add_argument("--bootstrap", type=int, default=1000)

    calibrate = model_commands.add_parser(
        "calibrate", help="choose thresholds (and ensemble weights) on your data: a new version"
    )
    common(calibrate)
    _model_arguments(calibrate, data_required=True)
    calibrate.add_argument(
        "--rule", default="youden", help="youden, sensitivity:0.9 or specificity:0.9"
    )
    calibrate.add_argument(
        "--fit-weights", action="store_true", help="fit member weights to maximise mean AUC"
    )
    calibrate.add_argument("--dry-run", action="store_true", help="show, write nothing")

    synthetic = model_commands.add_parser(
        "synthetic-task",
        help="write a synthetic labelled task (planted patterns) to check training works here",
    )
    common(synthetic)
    synthetic.add_argument("folder", type=Path)
    synthetic.add_argument("--images", type=int, default=300)
    synthetic.add_argument("--size", type=int, default=256)
    synthetic.add_argument("--seed", type=int, default=0)


def _model_arguments(parser: argparse.ArgumentParser, data_required: bool) -> None:
    """What evaluate and calibrate share: the model, the data, JSON output, seed, device."""
    parser.add_argument(
        "models", type=Path, nargs="*", help="bundle folders, or a models folder with "
        "ensemble.json (default: the installed model)",
    )  # fmt: skip
    _data_arguments(parser, required=data_required)
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


_TRAIN_KEYS = (
    "images_root", "fmt", "labels", "uncertain", "architecture", "input_size", "channels",
    "histogram_equalisation", "square", "init", "epochs", "batch_size", "learning_rate",
    "weight_decay", "schedule", "patience", "device", "seed", "validation_fraction",
    "threshold", "name", "version", "bootstrap",
)  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from workers.training.train import TrainConfig, train

    given: dict[str, Any] = {key: getattr(args, key) for key in _TRAIN_KEYS}
    given = {("format" if k == "fmt" else k): v for k, v in given.items() if v is not None}
    if args.augment is not None:
        given["augment"] = [] if args.augment.strip() == "none" else _list(args.augment)
    saved = args.out / "training" / "config.json"
    if args.resume and saved.is_file():
        config = TrainConfig.model_validate_json(saved.read_text())
        config = config.model_copy(update={"epochs": args.epochs, **_runtime(given)})
    else:
        config = TrainConfig(data=args.data, **given)
    result = train(config, args.out, resume=args.resume, progress=not args.quiet)
    auc = "n/a" if result.best_mean_auc is None else f"{result.best_mean_auc:.4f}"
    stopped = " (interrupted)" if result.interrupted else ""
    print(
        f"bundle written{stopped}: {result.bundle} (best epoch {result.best_epoch}, "
        f"validation mean AUC {auc}); report: {result.bundle / 'docs/validation/report.html'}"
    )
    return 130 if result.interrupted else 0


def _runtime(given: dict[str, Any]) -> dict[str, Any]:
    """What a resumed run may change: where it runs and when it stops."""
    return {k: v for k, v in given.items() if k in {"device", "patience"}}


def _installed(settings: Settings) -> tuple[list[Path], list[float] | None]:
    from workers.bundles import list_bundles
    from workers.ensemble_config import ENSEMBLE_FILE

    """The model as the node serves it: the ``ensemble`` setting (with its weights), else the
    models folder's ensemble.json, else every installed bundle."""
    if settings.ensemble:
        paths = [
            settings.models_path / m.bundle
            if (settings.models_path / m.bundle).is_dir()
            else Path(m.bundle)
            for m in settings.ensemble
        ]
        return paths, [m.weight for m in settings.ensemble]
    if (settings.models_path / ENSEMBLE_FILE).is_file():
        return [settings.models_path], None
    return [bundle.path for bundle in list_bundles(settings.models_path)], None


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    if args.ledger:
        from workers.training.ledger_eval import evaluate_ledger

        if args.labels is None:
            print("error: --ledger needs --labels FILE (ground truth)", file=sys.stderr)
            return 2
        result = evaluate_ledger(
            settings, args.labels, report_dir=args.report, weeks=args.weeks,
            bootstrap=args.bootstrap, seed=args.seed,
        )  # fmt: skip
        if args.json:
            print(json.dumps(result, indent=2, allow_nan=False))
        else:
            _print_ledger(result)
        return 0
    from workers.training.evaluate import evaluate_model, print_json, print_result

    if args.data is None:
        print("error: --data is required (or --ledger --labels FILE)", file=sys.stderr)
        return 2
    models, weights = (args.models, args.weights) if args.models else _installed(settings)
    result = evaluate_model(
        models, args.data, images_root=args.images_root,
        fmt=args.fmt, labels=args.findings, weights=args.weights or weights,
        report_dir=args.report,
        bootstrap=args.bootstrap, seed=args.seed, device=args.device, progress=not args.json,
    )  # fmt: skip
    (print_json if args.json else print_result)(result)
    return 0


def _print_ledger(result: dict[str, Any]) -> None:
    print(
        f"{result['matched_studies']} of {result['ground_truth_studies']} studies matched by "
        f"{result['key']}; {result['results_without_ground_truth']} results have no ground truth"
    )
    for version in result["versions"]:
        demo = " [DEMO]" if version["demo"] else ""
        mean = version["mean_auc"]
        print(
            f"  {version['model_name']} {version['model_version']}{demo}: "
            f"{version['studies']} studies ({version['shadow_studies']} in shadow mode), "
            f"mean AUC {'n/a' if mean is None else f'{mean:.3f}'}"
        )
        for row in version["per_finding"]:
            sens, spec, npv = row["sensitivity"], row["specificity"], row["npv"]
            print(
                f"    {row['label']:<26} n+ {row['n_positive']:>4} n- {row['n_negative']:>4} "
                f"sens {_fmt(sens)} spec {_fmt(spec)} NPV {_fmt(npv)}"
            )
    if "report" in result:
        print(f"report: {result['report']}")
    print("AI-generated results; not a diagnosis.")


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from workers.training.calibrate import calibrate
    from workers.training.operating_points import ThresholdRule

    if settings.ensemble:
        print(
            "warning: the configuration's `ensemble` setting takes precedence over "
            "ensemble.json; update it by hand with the weights and thresholds shown here",
            file=sys.stderr,
        )
    models, weights = (args.models, None) if args.models else _installed(settings)
    result = calibrate(
        models, args.data, models_dir=settings.models_path, weights=weights,
        rule=ThresholdRule.parse(args.rule), fit_weights=args.fit_weights,
        images_root=args.images_root, fmt=args.fmt, dry_run=args.dry_run, seed=args.seed,
        device=args.device, progress=not args.json,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
        return 0
    print(f"operating points by {result['rule']} on {result['n_images']} images:")
    for row in result["per_finding"]:
        before, after = row["before"], row["after"]
        print(
            f"  {row['label']:<26} threshold {row['old_threshold']:.3f} -> "
            f"{row['new_threshold']:.3f}  sensitivity {_fmt(before['sensitivity'])} -> "
            f"{_fmt(after['sensitivity'])}  specificity {_fmt(before['specificity'])} -> "
            f"{_fmt(after['specificity'])}"
        )
    for note in result["notes"]:
        print(f"  note: {note}")
    if "weights" in result:
        print(f"  weights: {result['weights']} (mean AUC {result['weights_mean_auc']:.4f})")
    written = result["written"]
    if written is None:
        print("dry run: nothing written")
    else:
        where = written.get("bundle") or written.get("ensemble")
        print(f"written: {where} version {written['version']} (the previous version is kept)")
        print("restart the analysis workers to serve it")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int | None:
    """Run a training/evaluation/calibration command; None when ``args`` is another one."""
    command = args.models_command
    handlers: dict[str, Callable[[], int]] = {
        "train": lambda: _train(args),
        "evaluate": lambda: _evaluate(args, settings),
        "calibrate": lambda: _calibrate(args, settings),
        "synthetic-task": lambda: _synthetic(args),
    }
    if command not in handlers:
        return None
    from cxr_node.errors import ModelBundleError
    from workers.training.datasets import DataError
    from workers.training.train import TrainingError

    try:
        return handlers[command]()
    except (DataError, ModelBundleError, TrainingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _synthetic(args: argparse.Namespace) -> int:
    from workers.training.synthetic import write_synthetic_task

    csv_path = write_synthetic_task(args.folder, args.images, size=args.size, seed=args.seed)
    print(f"synthetic task (not chest X-ray data): {csv_path}")
    return 0
