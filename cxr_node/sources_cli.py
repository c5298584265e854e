"""``cxr-node aet list | add | remove``: known sources managed at run time, stored in the ledger.

A running ``serve`` picks up a change within seconds (no restart). Every change is recorded in
the ledger's change log and logged.
"""

from __future__ import annotations

import argparse
import json
import logging

from pydantic import ValidationError

from cxr_node.destinations import SourceRule
from cxr_node.errors import ConfigurationError
from cxr_node.ledger import Ledger
from cxr_node.settings import Settings

log = logging.getLogger(__name__)


def run_aet(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch one ``aet`` subcommand; returns the exit code."""
    ledger = Ledger(settings.ledger)
    try:
        if args.aet_command == "list":
            return _list(settings, ledger, args.json)
        if args.aet_command == "add":
            return _add(settings, ledger, args.ae_title, args.host, args.route)
        return _remove(ledger, args.ae_title, args.host)
    finally:
        ledger.close()


def _list(settings: Settings, ledger: Ledger, as_json: bool) -> int:
    rows = [(rule, "ledger") for rule in ledger.list_sources()]
    rows += [(rule, "config") for rule in settings.sources]
    if as_json:
        print(json.dumps([{**rule.model_dump(), "origin": origin} for rule, origin in rows]))
        return 0
    if not rows:
        print("no known sources")
    for rule, origin in rows:
        routes = ", ".join(rule.destinations) or "(results kept, not sent)"
        print(f"{rule.ae_title:<16}  {rule.host or '*':<18}  -> {routes}  [{origin}]")
    return 0


def _add(
    settings: Settings, ledger: Ledger, ae_title: str, host: str | None, route: list[str]
) -> int:
    known = {d.name for d in settings.destinations}
    unknown = sorted(set(route) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none configured"
        raise ConfigurationError(
            f"unknown destination(s) {', '.join(unknown)}; configured: {allowed}"
        )
    try:
        rule = SourceRule(ae_title=ae_title, host=host, destinations=route)
    except ValidationError as exc:
        raise ConfigurationError(exc.errors()[0]["msg"]) from None
    new = ledger.put_source(rule)
    verb = "added" if new else "replaced"
    log.info("source %s %s (host %s)", rule.ae_title, verb, rule.host or "*")
    print(f"{verb}: {rule.ae_title} host={rule.host or '*'} -> {', '.join(route) or '-'}")
    return 0


def _remove(ledger: Ledger, ae_title: str, host: str | None) -> int:
    if not ledger.remove_source(ae_title.strip(), host):
        print(f"no such source: {ae_title} host={host or '*'}")
        return 1
    log.info("source %s removed (host %s)", ae_title, host or "*")
    print(f"removed: {ae_title} host={host or '*'}")
    return 0
