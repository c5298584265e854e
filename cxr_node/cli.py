"""The ``cxr-node`` command: serve | web | worker | analyze | check | models | studies | status |
conflicts | reprocess | purge | db | aet | users | tokens."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_node.errors import ConfigurationError, CxrNodeError
from cxr_node.ledger.engine import LedgerUnavailable
from cxr_node.logs import configure_logging
from cxr_node.settings import Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML configuration file")
    parser.add_argument("--data-dir", type=Path, help="root of spool, ledger, queue and models")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-node", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the DICOM listener (and the embedded worker)")
    _common(serve)
    serve.add_argument("--port", type=int)
    serve.add_argument("--ae-title")
    serve.add_argument("--bind-address")
    serve.add_argument("--spool", type=Path, dest="spool_dir")
    serve.add_argument(
        "--destination",
        action="append",
        dest="destinations",
        metavar="AE@HOST:PORT",
        help="where results go (repeatable)",
    )
    serve.add_argument("--broker", dest="broker_url", help="redis://...; default: embedded")
    serve.add_argument(
        "--quiet-seconds",
        type=float,
        dest="study_quiet_seconds",
        help="wait this long after a study's last image before analysing it",
    )

    serve.add_argument(
        "--http-port", type=int, dest="http_port", help="the web app's port (0: no web app)"
    )

    web = commands.add_parser(
        "web", help="run the web app alone (worklist, API, metrics) against the ledger"
    )
    _common(web)
    web.add_argument("--http-port", type=int, dest="http_port")

    worker = commands.add_parser("worker", help="run an analysis worker (the GPU side)")
    _common(worker)
    worker.add_argument("--broker", dest="broker_url")
    worker.add_argument(
        "--destination",
        action="append",
        dest="destinations",
        metavar="AE@HOST:PORT",
        help="where results go (repeatable); the same destinations as serve's",
    )
    worker.add_argument(
        "--role",
        choices=["all", "analysis", "delivery"],
        default="all",
        help="analysis (models, GPU), delivery (C-STORE to destinations), or both (default)",
    )
    worker.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)

    analyze = commands.add_parser("analyze", help="analyse files offline, no network")
    _common(analyze)
    analyze.add_argument("files", nargs="+", type=Path)
    analyze.add_argument("--json", action="store_true", help="print JSON")
    analyze.add_argument("--out", type=Path, help="write the SR and SC here")

    check = commands.add_parser("check", help="exit 0 when C-ECHO and the broker answer")
    _common(check)
    check.add_argument("--port", type=int)
    check.add_argument("--ae-title")
    check.add_argument("--broker", dest="broker_url")

    models = commands.add_parser("models", help="model bundles")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    init_demo = model_commands.add_parser("init-demo", help="write the DEMO (untrained) bundles")
    _common(init_demo)
    init_demo.add_argument("--force", action="store_true", help="overwrite existing bundles")
    init_demo.add_argument(
        "--if-none", action="store_true", help="do nothing when any bundle is installed"
    )
    listing = model_commands.add_parser("list", help="list installed bundles")
    _common(listing)
    verify = model_commands.add_parser("verify", help="check every bundle's weights sha256")
    _common(verify)
    importer = model_commands.add_parser(
        "import-torchxrayvision", help="make a bundle of a torchxrayvision DenseNet weights file"
    )
    _common(importer)
    importer.add_argument("weights_file", type=Path)
    importer.add_argument("--variant", help="all, nih, pc, chex, rsna, mimic_nb, mimic_ch")
    from cxr_node.models_cli import add_parsers as add_model_parsers

    add_model_parsers(model_commands, _common)

    studies = commands.add_parser("studies", help="recent studies and their states")
    _common(studies)
    studies.add_argument("--last", type=int, default=20)
    studies.add_argument("--json", action="store_true")

    status = commands.add_parser("status", help="one study: state, reasons, images, deliveries")
    _common(status)
    status.add_argument("study_uid", metavar="STUDY_UID")
    status.add_argument("--json", action="store_true")
    status.add_argument(
        "--patient", action="store_true", help="also show patient and study attributes"
    )

    conflicts = commands.add_parser(
        "conflicts",
        help="instances refused because their Study or SOP Instance UID is known for another "
        "patient (no patient data shown)",
    )
    _common(conflicts)
    conflicts.add_argument(
        "--since",
        type=_since,
        metavar="WHEN",
        help="only those since: a duration back (30m, 24h, 7d) or an ISO 8601 date or time "
        "(UTC unless it names its offset)",
    )
    conflicts.add_argument("--last", type=int, default=50, help="the newest N (default 50)")
    conflicts.add_argument("--json", action="store_true")

    reprocess = commands.add_parser("reprocess", help="analyse a study again and resend results")
    _common(reprocess)
    reprocess.add_argument("study_uid", metavar="STUDY_UID")

    purge = commands.add_parser(
        "purge", help="delete finished studies' spooled files by the retention policy"
    )
    _common(purge)
    purge.add_argument("--dry-run", action="store_true", help="only say what would go")

    from cxr_node.accounts_cli import add_parsers as add_account_parsers

    add_account_parsers(commands, _common)

    db = commands.add_parser("db", help="the ledger's database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_commands.add_parser("upgrade", help="migrate the ledger to this release")
    _common(db_upgrade)

    aet = commands.add_parser("aet", help="known sources (calling AE titles) and their routes")
    aet_commands = aet.add_subparsers(dest="aet_command", required=True)
    aet_list = aet_commands.add_parser("list", help="known sources, from the ledger and the file")
    _common(aet_list)
    aet_list.add_argument("--json", action="store_true")
    aet_add = aet_commands.add_parser("add", help="add (or replace) a known source")
    _common(aet_add)
    aet_add.add_argument("ae_title", metavar="AE_TITLE")
    aet_add.add_argument("--host", help="only from this IP address or network (CIDR)")
    aet_add.add_argument(
        "--destination",
        action="append",
        dest="route",
        default=[],
        metavar="NAME",
        help="destination name its results go to (repeatable; none: results are kept only)",
    )
    aet_remove = aet_commands.add_parser("remove", help="forget a known source")
    _common(aet_remove)
    aet_remove.add_argument("ae_title", metavar="AE_TITLE")
    aet_remove.add_argument("--host")
    return parser


def _since(text: str) -> float:
    """``--since WHEN`` as epoch seconds (argparse's error, exit 2, when it is neither form)."""
    from cxr_node.reports import parse_since

    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SETTING_FLAGS = (
    "data_dir",
    "log_level",
    "port",
    "ae_title",
    "bind_address",
    "spool_dir",
    "destinations",
    "broker_url",
    "study_quiet_seconds",
    "http_port",
)


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {key: getattr(args, key, None) for key in _SETTING_FLAGS}
    return load_settings(args.config, **flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigurationError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return _dispatch(args, settings)
    except LedgerUnavailable as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 2
    except CxrNodeError as exc:
        print(f"cxr-node: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from cxr_node.serve import serve

        serve(settings)
        return 0
    if args.command == "web":
        from cxr_node.web.server import run_web

        if not settings.http_port:
            print("cxr-node: web needs an http_port", file=sys.stderr)
            return 2
        return run_web(settings)
    if args.command == "worker":
        if args.exit_with_parent:
            from cxr_node.embedded import exit_with_parent

            exit_with_parent(args.exit_with_parent)
        from workers.worker import run_worker  # imports torch: worker side only

        return run_worker(settings, args.role)
    if args.command == "analyze":
        from workers.offline import analyze_files

        return analyze_files(settings, args.files, as_json=args.json, out_dir=args.out)
    if args.command == "check":
        from cxr_node.check import run_check

        problem = run_check(settings)
        if problem:
            print(f"unhealthy: {problem}")
            return 1
        print("ok")
        return 0
    if args.command == "models":
        from cxr_node import models_cli

        handled = models_cli.run(args, settings)
        if handled is not None:
            return handled
        from workers import bundles

        if args.models_command == "init-demo":
            installed = bundles.list_bundles(settings.models_path)
            if args.if_none and installed:
                print(f"models installed: {', '.join(b.metadata.name for b in installed)}")
                return 0
            for path in bundles.write_demo_bundles(settings.models_path, force=args.force):
                print(f"demo bundle (DEMO, not trained, not for clinical use): {path}")
            return 0
        if args.models_command == "verify":
            return _verify_bundles(settings)
        if args.models_command == "import-torchxrayvision":
            from workers.torchxrayvision_import import import_torchxrayvision

            folder = import_torchxrayvision(args.weights_file, settings.models_path, args.variant)
            print(f"imported: {bundles.read_bundle(folder)} at {folder}")
            return 0
        for info in bundles.list_bundles(settings.models_path):
            print(info)
        from workers.ensemble_config import read_ensemble_config

        config = read_ensemble_config(settings.models_path)
        if config is not None:
            members = ", ".join(f"{m.bundle} x{m.weight:g}" for m in config.members)
            print(
                f"ensemble configuration version {config.version}: {members}; "
                f"thresholds for {len(config.thresholds)} findings ({config.note or 'no note'})"
            )
        return 0
    if args.command == "studies":
        return _print_studies(settings, args.last, args.json)
    if args.command == "status":
        from cxr_node.reports import print_status

        return print_status(settings, args.study_uid, as_json=args.json, patient=args.patient)
    if args.command == "conflicts":
        from cxr_node.reports import print_conflicts

        return print_conflicts(settings, since=args.since, last=args.last, as_json=args.json)
    if args.command == "reprocess":
        from cxr_node.reports import request_reprocess

        return request_reprocess(settings, args.study_uid)
    if args.command == "purge":
        from cxr_node.reports import run_purge

        return run_purge(settings, dry_run=args.dry_run)
    if args.command == "db":
        from cxr_node.reports import run_db_upgrade

        return run_db_upgrade(settings)
    if args.command in {"users", "tokens"}:
        from cxr_node.accounts_cli import run_tokens, run_users

        return (run_users if args.command == "users" else run_tokens)(settings, args)
    if args.command == "aet":
        from cxr_node.sources_cli import run_aet

        return run_aet(settings, args)
    raise AssertionError(args.command)


def _verify_bundles(settings: Settings) -> int:
    from workers import bundles

    failures = 0
    installed = bundles.list_bundles(settings.models_path)
    for listed in installed:
        try:
            bundles.read_bundle(listed.path, verify=True)
            print(f"ok      {listed}")
        except CxrNodeError as exc:
            failures += 1
            print(f"FAILED  {exc}")
    if not installed:
        print(f"no bundles in {settings.models_path}")
        return 1
    return 1 if failures else 0


def _print_studies(settings: Settings, last: int, as_json: bool) -> int:
    from cxr_node.reports import print_studies

    return print_studies(settings, last, as_json=as_json)
