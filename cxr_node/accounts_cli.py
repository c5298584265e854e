"""``cxr-node users add | list | remove | passwd`` and ``cxr-node tokens add | list | revoke``.

Passwords come on standard input with ``--password-stdin`` (scripts) or are asked for twice at
a terminal; they never appear on the command line. A new token is printed once, alone on the
last line, and only its hash is kept. Every change goes into the ledger's change log and the
log (names and roles, never secrets).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import re
import sys
import time
from collections.abc import Callable

from cxr_node.errors import ConfigurationError
from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from cxr_node.web import credentials
from cxr_node.web.credentials import Role

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def add_parsers(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The ``users`` and ``tokens`` commands (``common`` adds --config and friends)."""
    roles = [role.value for role in Role]
    users = commands.add_parser("users", help="people who log in to the web pages")
    user_commands = users.add_subparsers(dest="users_command", required=True)
    add = user_commands.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=roles, required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    listing = user_commands.add_parser("list", help="list users")
    listing.add_argument("--json", action="store_true")
    remove = user_commands.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name")
    passwd = user_commands.add_parser("passwd", help="set a user's password (sessions end)")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")

    tokens = commands.add_parser("tokens", help="API tokens for machines (Bearer)")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    token_add = token_commands.add_parser("add", help="make a token; printed once, last line")
    token_add.add_argument("name")
    token_add.add_argument("--role", choices=roles, required=True)
    token_list = token_commands.add_parser("list", help="list tokens (never their values)")
    token_list.add_argument("--json", action="store_true")
    revoke = token_commands.add_parser("revoke", help="revoke a token for good")
    revoke.add_argument("name")
    for parser in (add, listing, remove, passwd, token_add, token_list, revoke):
        common(parser)


def _name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ConfigurationError(
            "a name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    return value


def read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or asked twice at a terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ConfigurationError("the two passwords differ")
    else:
        raise ConfigurationError("no terminal to ask at: give the password with --password-stdin")
    problem = credentials.password_problem(password)
    if problem:
        raise ConfigurationError(problem)
    return password


def run_users(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch one ``users`` subcommand; returns the exit code."""
    ledger = Ledger(settings.ledger)
    try:
        command = args.users_command
        if command == "list":
            rows = ledger.list_users()
            if args.json:
                print(json.dumps([{"name": u.name, "role": u.role} for u in rows]))
            for user in [] if args.json else rows:
                print(f"{user.name:<24} {user.role}")
            if not rows and not args.json:
                print("no users")
            return 0
        name = _name(args.name)
        if command == "add":
            password = read_password(args.password_stdin)
            if not ledger.add_user(name, args.role, credentials.hash_password(password)):
                print(f"user exists: {name}", file=sys.stderr)
                return 1
            log.info("user %s added with role %s", name, args.role)
            print(f"added: {name} ({args.role})")
            return 0
        if command == "passwd":
            if ledger.user(name) is None:
                print(f"no such user: {name}", file=sys.stderr)
                return 1
            password = read_password(args.password_stdin)
            ledger.set_password_hash(name, credentials.hash_password(password))
            log.info("password of user %s changed; their sessions ended", name)
            print(f"password changed: {name}")
            return 0
        if not ledger.remove_user(name):
            print(f"no such user: {name}", file=sys.stderr)
            return 1
        log.info("user %s removed", name)
        print(f"removed: {name}")
        return 0
    finally:
        ledger.close()


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def run_tokens(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch one ``tokens`` subcommand; returns the exit code."""
    ledger = Ledger(settings.ledger)
    try:
        command = args.tokens_command
        if command == "list":
            rows = ledger.list_tokens()
            if args.json:
                print(
                    json.dumps(
                        [
                            {
                                "name": t.name,
                                "role": t.role,
                                "created_at": t.created_at,
                                "last_used_at": t.last_used_at,
                                "revoked_at": t.revoked_at,
                            }
                            for t in rows
                        ]
                    )
                )
                return 0
            for token in rows:
                state = f"revoked {_when(token.revoked_at)}" if token.revoked_at else "live"
                print(
                    f"{token.name:<24} {token.role:<9} created {_when(token.created_at)}  "
                    f"last used {_when(token.last_used_at)}  {state}"
                )
            if not rows:
                print("no tokens")
            return 0
        name = _name(args.name)
        if command == "add":
            made = credentials.new_token()
            if not ledger.add_token(name, made.token_id, made.secret_hash, args.role):
                print(f"token name in use: {name}", file=sys.stderr)
                return 1
            log.info("token %s added with role %s", name, args.role)
            print(f"token {name} ({args.role}); shown once, keep it now:")
            print(made.value)
            return 0
        if not ledger.revoke_token(name):
            print(f"no such live token: {name}", file=sys.stderr)
            return 1
        log.info("token %s revoked", name)
        print(f"revoked: {name}")
        return 0
    finally:
        ledger.close()
